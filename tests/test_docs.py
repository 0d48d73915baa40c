"""The task pages under docs/tasks run as written, each in a fresh folder.

A page is read top to bottom: ```python blocks run in one namespace (later blocks see what
earlier ones made), and in ```console blocks every line ``$ embedcluster ...`` runs through the
command's entry point in this process and must exit 0, as a user's shell would see it. Lines
``$ pip ...`` are installation steps, not run here (the test environment has the extras).
A page whose first line after the title is ``<!-- docs-test: slow -->`` runs in the slow tier.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs" / "tasks"
_BLOCK = re.compile(r"```(?P<lang>python|console)\n(?P<code>.*?)```", re.S)


def _pages() -> list:
    out = []
    for page in sorted(DOCS.glob("*.md")):
        text = page.read_text(encoding="utf-8")
        marks = [pytest.mark.slow] if "<!-- docs-test: slow -->" in text else []
        out.append(pytest.param(page, id=page.name, marks=marks))
    return out


def _run_console(code: str, page: str, line: int, capsys) -> None:
    from embedcluster.cli import main

    for offset, text in enumerate(code.splitlines()):
        if not text.startswith("$ "):
            continue  # shown output
        argv = shlex.split(text[2:])
        if argv[0] == "pip" or argv[:3] == ["python3", "-m", "pip"]:
            continue
        assert argv[0] == "embedcluster", f"{page}:{line + offset}: only embedcluster commands run here: {text}"
        rc = main(argv[1:])
        captured = capsys.readouterr()
        assert rc == 0, f"{page}:{line + offset}: `{text[2:]}` exited {rc}:\n{captured.out}\n{captured.err}"


def _csv_rows(path: str) -> list:
    import csv

    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _run_outputs(out: str, n: int, columns: list) -> None:
    """What a page says `run` writes under OUT: every item's cluster in labels.csv / .npy, the
    embeddings, the metrics, the report and a pipeline that loads."""
    import numpy as np

    from embedcluster.pipeline import TransferClustering

    rows = _csv_rows(f"{out}/labels.csv")
    assert len(rows) == n and list(rows[0]) == columns
    labels = np.load(f"{out}/labels.npy")
    assert [int(r["cluster"]) for r in rows] == labels.tolist()
    assert np.load(f"{out}/embeddings.npy").shape[0] == n
    assert Path(f"{out}/metrics.json").is_file() and Path(f"{out}/report/report.html").is_file()
    # The saved pipeline predicts with its probe, trained on these clusters: it agrees with them.
    predicted = TransferClustering.load(f"{out}/pipeline").predict(Z=np.load(f"{out}/embeddings.npy"))
    assert (predicted == labels).mean() > 0.9


def _accuracy(out: str) -> float:
    import json

    return json.loads(Path(f"{out}/metrics.json").read_text())["clusters"]["accuracy"]


def _check_images(ns: dict) -> None:
    _run_outputs("runs/digits", 1797, ["index", "item", "cluster", "truth"])
    rows = _csv_rows("runs/digits/labels.csv")
    assert rows[5]["item"] == "digit-0005.png" and rows[5]["truth"] == str(ns["digits"].target[5])
    # The page's figures: about 0.79 for the pixels and 0.90 for the network's features.
    assert abs(_accuracy("runs/pixels") - 0.79) < 0.02 and abs(_accuracy("runs/digits") - 0.90) < 0.02


def _check_texts(ns: dict) -> None:
    _run_outputs("runs/notes", 32, ["index", "item", "cluster", "truth"])
    assert _accuracy("runs/notes") >= 0.9  # four unrelated topics, eight lines each


def _check_choose(ns: dict) -> None:
    import json

    import numpy as np

    assert json.loads(Path("runs/select/selection.json").read_text())["choice"]["k"] == 6  # the page says k=6
    labels = np.load("labels.npy")
    from sklearn.metrics import adjusted_rand_score

    made = ns["groups"]  # the six groups the page made, then 150 uniform points
    truth = ((ns["centres"][None] - made[:, None]) ** 2).sum(-1).argmin(1)
    assert labels.max() + 1 == 6 and adjusted_rand_score(truth, labels[:len(made)]) > 0.99
    assert (labels[len(made):] == -1).mean() > 0.9 and ns["db"].eps_ > 0


def _check_deploy(ns: dict) -> None:
    import numpy as np

    new = np.load("new-labels.npy")
    assert new.shape == (297,) and new.min() >= -1 and new.max() <= 9
    assert (ns["clusters"] == new).all()  # the Python service and the command agree


def _check_embeddings(ns: dict) -> None:
    import numpy as np

    assert np.load("labels.npy").shape == (5000,)


def _check_scale_out(ns: dict) -> None:
    assert (ns["dkm"].labels_ == ns["same"].labels_).all()


#: What each page says happens, checked after it ran.
CLAIMS = {"cluster-images.md": _check_images, "cluster-texts.md": _check_texts,
          "choose-k-and-eps.md": _check_choose, "deploy.md": _check_deploy,
          "cluster-embeddings.md": _check_embeddings, "scale-out.md": _check_scale_out}


def test_every_task_has_a_page():
    names = {p.name for p in DOCS.glob("*.md")}
    assert set(CLAIMS) <= names, f"docs/tasks lacks {sorted(set(CLAIMS) - names)}"


@pytest.mark.parametrize("page", _pages())
def test_task_page_runs(page, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # pages write files: never into the tree
    text = page.read_text(encoding="utf-8")
    namespace: dict = {"__name__": "__docs__"}
    blocks = list(_BLOCK.finditer(text))
    assert blocks, f"{page.name} has no runnable block"
    for m in blocks:
        line = text.count("\n", 0, m.start("code")) + 1
        if m.group("lang") == "python":
            exec(compile(m.group("code"), f"{page.name}:{line}", "exec"), namespace)
        else:
            _run_console(m.group("code"), page.name, line, capsys)
    CLAIMS[page.name](namespace)
