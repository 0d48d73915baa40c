"""The README's Python code blocks run as written, each on its own, in a fresh folder.

A block that needs something a test machine may lack (files, a model) is marked in the README
by a comment line just above it, `<!-- readme-test: skip REASON -->`; the skip says why. Keep
such blocks few: a newcomer copies these blocks first."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
_BLOCK = re.compile(r"(?:<!-- readme-test: skip (?P<skip>[^>]*?) -->\n)?```python\n(?P<code>.*?)```", re.S)


def _blocks() -> list:
    text = README.read_text(encoding="utf-8")
    out = []
    for m in _BLOCK.finditer(text):
        line = text.count("\n", 0, m.start("code")) + 1
        marks = [pytest.mark.skip(reason=m.group("skip").strip())] if m.group("skip") else []
        out.append(pytest.param(m.group("code"), line, id=f"README.md:{line}", marks=marks))
    return out


def test_the_readme_has_python_blocks():
    assert len(_blocks()) >= 2, "README.md should show the Python quick start and the transfer pipeline"


@pytest.mark.parametrize("code,line", _blocks())
def test_readme_python_block_runs(code, line, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # blocks may write files ("model", "encoder"): never into the tree
    exec(compile(code, f"README.md:{line}", "exec"), {"__name__": "__readme__"})
