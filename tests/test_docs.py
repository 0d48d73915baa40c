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


def test_every_task_has_a_page():
    names = {p.name for p in DOCS.glob("*.md")}
    for task in ("cluster-images.md", "cluster-texts.md", "cluster-embeddings.md", "choose-k-and-eps.md",
                 "deploy.md", "scale-out.md"):
        assert task in names, f"docs/tasks/{task} is missing"


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
