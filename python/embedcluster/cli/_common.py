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


def load_truth(spec: str):
    if spec.endswith(".npy"):
        return load_npy(spec, "labels")
    from ..data import load

    y = load(spec).y
    if y is None:
        raise ValueError(f"{spec} has no labels to evaluate against")
    return y


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
                        "weights' resolution), a side such as 32 or HEIGHTxWIDTH; smaller is faster")
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
        flags = ", ".join("--" + n.replace("_", "-") for n in ("image_size", "invert", "layer") if settings.get(n))
        raise ValueError(f"{flags} shape a pretrained encoder; add --encoder (e.g. --encoder efficientnet-lite0)")
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
