"""What the commands share: argument types, the checks of output paths and optional
dependencies made before any work, .npy input and output, and the printing of results."""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional


class Parser(argparse.ArgumentParser):
    """argparse with the CLI's error contract: one line on stderr, exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (see {self.prog} --help)\n")


def int_at_least(lo: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if v < lo:
            raise argparse.ArgumentTypeError(f"{v} should be >= {lo}")
        return v
    return parse


def real_in(lo: float, hi: float = math.inf, lo_open: bool = True) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not math.isfinite(v) or (v <= lo if lo_open else v < lo) or v > hi:
            rng = f"{'(' if lo_open else '['}{lo}, {hi}{')' if hi == math.inf else ']'}"
            raise argparse.ArgumentTypeError(f"{text} should be a finite number in {rng}")
        return v
    return parse


POSITIVE = int_at_least(1)


def require(modules: List[str], why: str, extra: str = "transfer") -> None:
    """Fails before any work when an optional dependency is missing, naming the pip package and
    the embedcluster extra that brings it."""
    import importlib

    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as e:
            pip = {"matplotlib": "matplotlib", "torch": "torch==2.13.0", "safetensors": "safetensors",
                   "PIL": "pillow", "tqdm": "tqdm", "dask": "'dask[array]'"}.get(name, name.replace("_", "-"))
            raise ImportError(f"{why} needs {name}, which is not installed ({e}); install it with "
                              f"pip install {pip}, or pip install 'embedcluster[{extra}]'") from None


def check_output_file(path: Optional[str], what: str) -> None:
    """Checks an output file path before any work: its folder exists, and the path is absent
    or a regular file (a directory, link, device or FIFO is never replaced)."""
    if path is None:
        return
    from .._io import check_output_path

    p = check_output_path(path)
    if not p.parent.is_dir():
        raise FileNotFoundError(f"cannot write {what} {p}: folder {p.parent} does not exist; create it first")


def check_output_dir(path: Optional[str], what: str) -> None:
    """An output folder must be absent or a real directory (not a file, link or device)."""
    if path is None:
        return
    import stat

    from .._io import UnsafePathError

    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafePathError(f"{what} {path} exists and is not a directory; give a folder path")


def emit(args: argparse.Namespace, result: Dict[str, Any], lines: List[str]) -> int:
    """Prints the result as JSON (--json) or as human lines."""
    if getattr(args, "json", False):
        from .._io import dumps

        print(dumps(result, allow_nan=True))
    else:
        for line in lines:
            print(line)
    return 0


def load_npy(path: str, what: str):
    """Embeddings (2-D, memory-mapped) or labels (1-D integers), with the .npy header checked
    against the file before anything is read (embedcluster.data)."""
    import numpy as np

    from ..data.arrays import _load_npy_file

    if what == "embeddings":
        arr = _load_npy_file(Path(path), mmap=True)
        if arr.ndim != 2 or arr.shape[0] == 0:
            raise ValueError(f"embeddings file {path} should hold a non-empty 2-D array (n, d), got shape {arr.shape}")
        return arr
    arr = _load_npy_file(Path(path), mmap=False, labels=True)
    if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{what} file {path} should hold a 1-D integer array, got {arr.dtype} of shape {arr.shape}")
    return arr


def embedding_files(spec: str) -> List[Path]:
    """The .npy files that EMBEDDINGS names: one file, the .npy files of a folder (sorted by name)
    or the files a glob pattern matches (sorted by path)."""
    import glob

    p = Path(spec)
    if p.is_dir():
        # Not is_file(): a FIFO named like a shard must be refused by the header check, not skipped.
        files = sorted(f for f in p.glob("*.npy") if not f.is_dir())
        if not files:
            raise FileNotFoundError(f"folder {p} holds no .npy files; pass a .npy file, a folder of .npy "
                                    "shards or a glob such as 'shards/*.npy'")
        return files
    if p.exists() or not glob.has_magic(spec):
        return [p]
    files = sorted(Path(f) for f in glob.glob(spec) if not os.path.isdir(f))
    if not files:
        raise FileNotFoundError(f"no file matches the pattern {spec!r}; quote the pattern so that the "
                                "shell passes it unexpanded, and check the folder")
    return files


def load_embedding_shards(files: List[Path]) -> List[Any]:
    """Each shard memory-mapped after its header check; all must be non-empty 2-D arrays with the
    first shard's number of columns and dtype (the error names the offending file)."""
    shards = [load_npy(str(f), "embeddings") for f in files]
    first = shards[0]
    for f, arr in zip(files[1:], shards[1:]):
        if arr.shape[1] != first.shape[1]:
            raise ValueError(f"embeddings shard {f} has {arr.shape[1]} columns but {files[0]} has "
                             f"{first.shape[1]}; all shards must have the same number of columns")
        if arr.dtype != first.dtype:
            raise ValueError(f"embeddings shard {f} holds {arr.dtype} but {files[0]} holds {first.dtype}; "
                             "all shards must share one dtype")
    return shards


def save_npy(path: str, arr) -> None:
    import io

    import numpy as np

    from .._io import atomic_write_bytes

    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    atomic_write_bytes(path, buf.getvalue())


def metric_line(name: str, rep: Dict[str, Any]) -> str:
    return f"{name:44s} ACC {rep['accuracy']:.3f}  NMI {rep['nmi']:.3f}  ARI {rep['ari']:.3f}"


def check_same_length(a, b, name_a: str, name_b: str) -> None:
    if len(a) != len(b):
        raise ValueError(f"{name_a} has {len(a)} entries but {name_b} has {len(b)}; they must describe the same points")


_TABLES = (".csv", ".tsv", ".jsonl", ".json")


def _split_column(spec: str):
    """'FILE:COLUMN' -> (FILE, COLUMN) when FILE is a table that exists; else (spec, None)."""
    if not os.path.exists(spec) and ":" in spec:
        path, column = spec.rsplit(":", 1)
        if column and os.path.isfile(path) and Path(path).suffix.lower() in _TABLES:
            return path, column
    return spec, None


def _labels_of_lines(path: Path):
    """One label per line of a text file (trailing blank lines ignored, a blank line inside refused)."""
    from ..data.text import _read_text

    lines = [line.strip() for line in _read_text(path).splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    blank = [i for i, line in enumerate(lines, 1) if not line]
    if blank:
        raise ValueError(f"--truth {path}: line {blank[0]} is empty; write one label per line")
    if not lines:
        raise ValueError(f"--truth {path} holds no labels; write one label per line")
    return lines


def _key_column(rows: List[Any], columns: List[str], ids: Optional[List[str]]) -> Any:
    """(column, {item id: row}) when a column of the table names every item of the data: an image's
    path relative to its folder, or a longer path that ends in it; else (None, None)."""
    if not ids:
        return None, None
    for col in columns:
        tails: Dict[str, Any] = {}  # every trailing run of path parts of a key -> its row (None: ambiguous)
        for _, r in rows:
            parts = str(r.get(col, "")).strip().replace("\\", "/").split("/")
            for start in range(len(parts)):
                tail = "/".join(parts[start:])
                tails[tail] = None if tail in tails and tails[tail] is not r else r
        found = [tails.get(i) for i in ids]
        if all(row is not None for row in found):
            return col, dict(zip(ids, found))
    return None, None


def _labels_of_table(path: Path, column: Any, ids: Optional[List[str]] = None, flag: str = "--truth"):
    """(labels, key column or None) from one column of a table: the column named, the only column,
    'label', or the column beside the one that names the data's files. When a column names every
    item (see :func:`_key_column`) the labels come in the data's order, else in the table's."""
    from ..data.text import _table_rows

    rows, columns = _table_rows(path)
    key, by_id = _key_column(rows, columns, ids)
    if column is None:
        rest = [c for c in columns if c != key]
        column = rest[0] if len(rest) == 1 else "label" if "label" in rest else None
        if column is None:
            raise ValueError(f"{flag} {path} has columns {', '.join(map(repr, columns))}; name the one with "
                             f"the labels: {flag} {path}:COLUMN (e.g. {path}:{columns[-1]})")
    if column not in columns:
        raise ValueError(f"{flag} {path}: no column {column!r}; its columns are {', '.join(map(repr, columns))}")
    if key == column:
        key, by_id = None, None
    ordered = [(f"row for {i}", by_id[i]) for i in ids] if by_id is not None and ids is not None else rows
    values = []
    for where, r in ordered:
        v = r.get(column)
        if v is None or (isinstance(v, str) and not v.strip()):
            raise ValueError(f"{flag} {path} {where} has no label in column {column!r}")
        values.append(v.strip() if isinstance(v, str) else v)
    return values, key


def read_truth(spec: str, n: Optional[int] = None, ids: Optional[List[str]] = None):
    """True labels kept apart from the data: (labels as int64, class names or None, description).

    SPEC is a .npy file (integers or strings), a text file with one label per line, a table
    (.csv / .tsv / .jsonl / .json: its only column, its 'label' column, or FILE:COLUMN), or a
    data set with labels ('digits', IDX files, a folder of class sub-folders). With ``n`` the
    number of labels must match. With ``ids`` (the data's image paths), a table with a column
    that names every image is matched to them by name, in any row order (the description says
    by which column).
    """
    import numpy as np

    from ..data.arrays import _encode_labels
    from ..data.idx import _looks_idx

    path_text, column = _split_column(spec)
    path = Path(path_text).expanduser()
    ext = path.suffix.lower()
    if ext == ".npy":
        from ..data.arrays import _load_npy_file

        raw: Any = _load_npy_file(path, mmap=False, labels=True)
        if raw.ndim != 1:
            raise ValueError(f"--truth {spec} holds an array of shape {raw.shape}; labels are 1-D, one per item")
    elif path.is_file() and ext in _TABLES:
        values, key = _labels_of_table(path, column, ids)
        raw = np.array([str(v) for v in values])
        if key is not None:
            spec = f"{spec} (matched to the items by its column {key!r})"
    elif path.is_file() and (ext in (".txt", ".labels", "") and not _looks_idx(path)):
        raw = np.array(_labels_of_lines(path))
    else:
        from ..data import load

        ds = load(spec)
        if ds.y is None:
            raise ValueError(f"--truth {spec} has no labels; give a file with one label per line, a .npy "
                             "array of labels, TABLE.csv:COLUMN, or a column name of DATA")
        raw = ds.y if not ds.class_names else np.array([ds.class_names[i] for i in ds.y])
    if n is not None and len(raw) != n:
        raise ValueError(f"--truth {spec} has {len(raw)} labels but the data has {n} items; give one label "
                         "per item, in the data's order")
    y, names = _encode_labels(np.asarray(raw), len(raw), name=f"--truth {spec}")
    assert y is not None
    return y, names, spec


def data_help(what: str) -> str:
    """The help text of an argument that names a data set."""
    return (f"{what}: a .npy file, a folder of .npy shards or images, IDX files, a .txt / .csv / .jsonl file, "
            "'digits' or 'fashion-mnist[:train|test]'")


def image_size(text: str) -> Any:
    """--image-size: 'auto', a side in pixels, or HEIGHTxWIDTH."""
    if text == "auto":
        return text
    parts = text.lower().split("x")
    try:
        sides = [int(p) for p in parts]
    except ValueError:
        sides = []
    if len(sides) not in (1, 2) or min(sides) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} should be 'auto', a side in pixels (e.g. 96) or "
                                         "HEIGHTxWIDTH (e.g. 64x96)")
    return sides[0] if len(sides) == 1 else sides


def layer_list(text: str) -> Any:
    """--layer: one layer name, or several separated by commas (concatenated)."""
    names = [p.strip() for p in text.split(",")]
    if not all(names):
        raise argparse.ArgumentTypeError(f"{text!r} should be a layer name or names separated by commas "
                                         "(e.g. block10,block14,head)")
    return names[0] if len(names) == 1 else names


def add_encoder_options(parser: argparse.ArgumentParser) -> None:
    """The flags that shape a pretrained image encoder (--image-size, --invert, --layer)."""
    parser.add_argument("--image-size", type=image_size, metavar="SIZE",
                        help="with --encoder: the side images are resized to before the network, 'auto' "
                        "(EfficientNet-Lite's default: small images enlarged to 96 px, large ones reduced to the "
                        "weights' resolution), a side such as 32 or HEIGHTxWIDTH; smaller is faster. A folder of "
                        "images is resized to it as it loads (needed when its images differ in size; without "
                        "--encoder it sets the size of the raw pixel features)")
    parser.add_argument("--invert", action="store_true",
                        help="with --encoder: invert images (1 - x) before the network, for dark-on-white "
                        "images such as Fashion-MNIST's")
    parser.add_argument("--layer", type=layer_list, metavar="NAME[,NAME...]",
                        help="with --encoder: the layer(s) whose pooled activations are the embedding (taps), "
                        "e.g. block6,block7,block8 or head (EfficientNet-Lite: stem, block0..block15 for Lite0 / "
                        "block20 for Lite1-2, head, logits); several are each L2-normalised and concatenated")


def encoder_options(settings: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """The load_encoder keywords that image_size / invert / layer settings ask for (None when none
    is set); they need an encoder."""
    opts = {key: settings[name] for name, key in (("image_size", "image_size"), ("layer", "embedding_layer"))
            if settings.get(name) is not None}
    if settings.get("invert"):
        opts["invert"] = True
    if opts and not settings.get("encoder"):
        if set(opts) == {"image_size"} and opts["image_size"] != "auto" and _image_folder(settings.get("data")):
            return None  # without an encoder, --image-size only resizes the image folder as it loads
        flags = ", ".join("--" + n.replace("_", "-") for n in ("image_size", "invert", "layer") if settings.get(n))
        raise ValueError(f"{flags} shape a pretrained encoder; add --encoder (e.g. --encoder efficientnet-lite0)"
                         + ("; without one, --image-size resizes only a folder of images" if "image_size" in opts
                            else ""))
    return opts or None


def add_quiet(parser: argparse.ArgumentParser) -> None:
    """--quiet (alias --no-progress) for a command with long steps, which show progress by default."""
    parser.add_argument("-q", "--quiet", "--no-progress", dest="quiet", action="store_true",
                        help="show no progress on stderr (by default long steps show a bar in a terminal, else a "
                        "line every ~10 s or tenth of the work); the results are printed either way")


def set_command(parser: argparse.ArgumentParser, run: Callable[[argparse.Namespace], int], json_help: str) -> None:
    """Adds the --json flag every command has and the function that runs the command."""
    parser.add_argument("--json", action="store_true", help=json_help)
    parser.set_defaults(func=run)


def device_name(text: str) -> str:
    """--device: auto, cpu, cuda or cuda:N (whether torch can use it is checked before any work)."""
    import re

    if text in ("auto", "cpu") or re.fullmatch(r"cuda(:\d+)?", text):
        return text
    raise argparse.ArgumentTypeError(f"{text!r} should be auto, cpu, cuda or cuda:N (e.g. cuda:1)")


def add_device_option(parser: argparse.ArgumentParser) -> None:
    """--device: where the encoder runs."""
    parser.add_argument("--device", type=device_name, metavar="DEVICE",
                        help="where the encoder runs: auto (a CUDA GPU when torch sees one, else the CPU; the "
                        "default), cpu, cuda or cuda:N")


def check_device(device: Optional[str]) -> None:
    """A --device that the installed torch cannot use fails before any work, in one sentence."""
    if device is not None and device != "auto":
        from ..encoders import resolve_device

        resolve_device(device)


def add_table_options(parser: argparse.ArgumentParser, labels: bool = True) -> None:
    """--text-column (and --label-column): the columns of a CSV, TSV, JSON-lines or JSON table."""
    parser.add_argument("--text-column", metavar="NAME",
                        help="for a .csv / .tsv / .jsonl / .json table: the column with the texts (default: text)")
    if labels:
        parser.add_argument("--label-column", metavar="NAME",
                            help="for a table: the column with true labels, used only to score the clusters "
                            "(default: label when the table has it; none: read no labels)")


def _image_folder(data: Any) -> bool:
    """DATA names a folder that load() reads as images (no .npy shards in it)."""
    if not isinstance(data, str):
        return False
    p = Path(data).expanduser()
    return p.is_dir() and not any(f.suffix.lower() == ".npy" for f in p.iterdir())


def load_data(settings: Dict[str, Any], notes: List[str]) -> Any:
    """The data set of settings['data'], with the table columns and the load-time image size the
    flags ask for; `notes` gets a line saying which table columns were used."""
    from ..data import load

    data = settings["data"]
    text_col, label_col = settings.get("text_column"), settings.get("label_column")
    is_table = isinstance(data, str) and Path(data).suffix.lower() in _TABLES and os.path.isfile(data)
    if (text_col or label_col) and not is_table:
        flags = " and ".join(f for f, v in (("--text-column", text_col), ("--label-column", label_col)) if v)
        raise ValueError(f"{flags} {'name columns' if text_col and label_col else 'names a column'} of a .csv / "
                         f".tsv / .jsonl / .json table, and {data} is not one")
    kw: Dict[str, Any] = {}
    size = settings.get("image_size")
    if size is not None and size != "auto" and _image_folder(data):
        kw["size"] = tuple(size) if isinstance(size, list) else size
    if not is_table:
        return load(data, **kw)
    label = "auto" if label_col is None else None if label_col == "none" else label_col
    ds = load(data, text_column=text_col or "text", label_column=label)
    _note_columns(data, text_col or "text", label, ds, notes)
    return ds


def _note_columns(data: str, text_col: str, label: Any, ds: Any, notes: List[str]) -> None:
    """Says which columns of a table were read, and when no label column was found, which others exist."""
    from ..data.text import table_columns

    if ds.y is not None:
        notes.append(f"texts from column {text_col!r}, true labels from column "
                     f"{label if label != 'auto' else 'label'!r} ({len(ds.class_names or [])} classes)")
        return
    if label is None:
        notes.append(f"texts from column {text_col!r}")
        return
    others = [c for c in table_columns(data) if c != text_col]
    hint = ""
    if label == "auto" and others:
        hint = (f"; to score the clusters, name the label column: --label-column {others[0]} "
                f"(columns besides the texts: {', '.join(others)})")
    notes.append(f"texts from column {text_col!r}; no true labels read"
                 + (" (no column named 'label')" if label == "auto" else "") + hint)


def cluster_summary(labels: Any) -> Dict[str, Any]:
    """n_points, n_clusters, n_noise and the size of every cluster (by cluster id) of a labelling."""
    import numpy as np

    ids, counts = np.unique(np.asarray(labels), return_counts=True)
    sizes = {int(i): int(c) for i, c in zip(ids, counts) if i >= 0}
    return {"n_points": int(len(labels)), "n_clusters": len(sizes), "n_noise": int(counts[ids == -1].sum()),
            "cluster_sizes": sizes}


def summary_lines(summary: Dict[str, Any], source: str) -> List[str]:
    """The human lines of :func:`cluster_summary`: counts, then the sizes (the first 30 clusters)."""
    sizes = summary["cluster_sizes"]
    shown = " ".join(f"{c}:{n}" for c, n in list(sizes.items())[:30]) + (" ..." if len(sizes) > 30 else "")
    return [f"{summary['n_points']} points from {source}: {summary['n_clusters']} clusters, "
            f"{summary['n_noise']} noise points (-1)", f"cluster sizes (cluster:points): {shown}"]


def write_labels_csv(path: Any, labels: Any, ds: Any = None, truth: Any = None, truth_names: Any = None) -> None:
    """A CSV to join back to the user's files: index (position in the data, from 0), item (the image's
    path relative to its folder, or the text; only when the data has them), cluster (-1 = noise),
    truth (the true label, when known)."""
    import csv
    import io

    from .._io import atomic_write_bytes

    items = None if ds is None else ds.ids if ds.ids is not None else ds.texts
    buf = io.StringIO(newline="")
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["index"] + (["item"] if items is not None else []) + ["cluster"]
               + (["truth"] if truth is not None else []))
    for i, c in enumerate(labels.tolist()):
        row = [i] + ([items[i]] if items is not None else []) + [c]
        if truth is not None:
            row.append(truth_names[truth[i]] if truth_names else int(truth[i]))
        w.writerow(row)
    atomic_write_bytes(path, buf.getvalue().encode("utf-8"))


def score_lines(truth: Any, labels: Any, what: str = "clusters") -> Any:
    """(report, lines) of the labels against the truth: ACC / NMI / ARI on one line."""
    from .. import metrics

    rep = metrics.clustering_report(truth, labels)
    return rep, [metric_line(what, rep)]


def save_labels(path: str, labels: Any, ds: Any = None, truth: Any = None, truth_names: Any = None) -> None:
    """Labels to PATH: a CSV (see :func:`write_labels_csv`) when it ends in .csv, else a .npy array."""
    if path.lower().endswith(".csv"):
        write_labels_csv(path, labels, ds, truth, truth_names)
    else:
        save_npy(path, labels)


def add_truth_option(parser: argparse.ArgumentParser, what: str) -> None:
    """--truth FILE: true labels in the order of the rows, to score the clusters."""
    parser.add_argument("--truth", metavar="FILE",
                        help=f"true labels of the {what}, in their order, to score the clusters (ACC, NMI, ARI): a "
                        "text file with one label per line, a .npy array, TABLE.csv:COLUMN, or a data set with "
                        "labels")


def load_cluster_labels(path: str):
    """Cluster labels written by `run` or `cluster`: a .npy array, or the 'cluster' column of a
    labels .csv file (int64, -1 = noise)."""
    import numpy as np

    if not path.lower().endswith(".csv"):
        return load_npy(path, "labels")
    values, _ = _labels_of_table(Path(path), "cluster", flag="--labels")
    try:
        return np.array([int(v) for v in values], dtype=np.int64)
    except ValueError:
        raise ValueError(f"{path}: column 'cluster' should hold integers (as run and cluster write it)") from None
