"""Labelled corpora of real short texts, built offline from what a Debian machine has installed.

* ``debian_packages``: the one-line descriptions of the packages in apt's package lists
  (``/var/lib/apt/lists/*_Packages`` and their .lz4 / .gz / .xz forms, as ``apt-get update``
  leaves them), labelled by the package's Section field. Only the sections in
  ``PACKAGE_SECTIONS`` are kept (topical ones whose descriptions a reader could sort; library,
  language and documentation sections such as libs, python or doc are left out because they
  describe form, not subject). Repeated descriptions (package families share one) are kept
  once; each section is capped at ``per_class`` texts, taken in name order after a seeded
  shuffle, so that the classes are balanced. Falls back to ``/var/lib/dpkg/status`` (installed
  packages only) when no list is present.
* ``man_pages``: the NAME lines of the installed manual pages (``apropos -l .``, i.e. the
  man-db index), labelled by section number (1-8, subsections such as 3pm folded into their
  section). Sections with fewer than ``min_per_class`` pages are dropped.

Both texts were written by Debian maintainers and upstream authors, nobody here. The result
depends on the installed lists / pages; the builders print what they read and the class sizes.
"""

from __future__ import annotations

import gzip
import lzma
import re
import subprocess
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np

#: Topical Debian sections used as classes of the package-description corpus.
PACKAGE_SECTIONS = ("games", "science", "sound", "graphics", "fonts", "math", "mail", "database", "editors",
                    "video", "electronics", "hamradio")
APT_LISTS = Path("/var/lib/apt/lists")
DPKG_STATUS = Path("/var/lib/dpkg/status")


def _read_list(path: Path) -> str:
    """Text of one apt package list, decompressed by its suffix (lz4 through the lz4cat tool)."""
    if path.suffix == ".lz4":
        return subprocess.run(["lz4cat", str(path)], check=True, capture_output=True).stdout.decode("utf-8", "replace")
    if path.suffix == ".gz":
        return gzip.decompress(path.read_bytes()).decode("utf-8", "replace")
    if path.suffix == ".xz":
        return lzma.decompress(path.read_bytes()).decode("utf-8", "replace")
    return path.read_text("utf-8", "replace")


def _package_records(text: str) -> List[Tuple[str, str, str]]:
    """(package, section, one-line description) of each stanza of a Packages/status file."""
    out = []
    for stanza in text.split("\n\n"):
        fields = dict(re.findall(r"^(Package|Section|Description): ?(.*)$", stanza, flags=re.M))
        if {"Package", "Section", "Description"} <= set(fields):
            section = fields["Section"].split("/")[-1].strip()  # "contrib/games" -> "games"
            out.append((fields["Package"].strip(), section, fields["Description"].strip()))
    return out


def _balanced(records: List[Tuple[str, str, str]], classes: Tuple[str, ...], per_class: int,
              seed: int) -> Tuple[List[str], np.ndarray, List[str]]:
    """At most ``per_class`` distinct texts per class (seeded choice), as texts, labels, class names."""
    by_class: Dict[str, Dict[str, str]] = {c: {} for c in classes}
    for name, label, text in sorted(records):
        if label in by_class and text and text not in by_class[label]:
            by_class[label][text] = name
    # A text that two classes share says nothing about either: drop it from both.
    seen: Dict[str, int] = {}
    for group in by_class.values():
        for t in group:
            seen[t] = seen.get(t, 0) + 1
    rng = np.random.default_rng(seed)
    texts: List[str] = []
    labels: List[int] = []
    for i, c in enumerate(classes):
        pool = sorted(t for t in by_class[c] if seen[t] == 1)
        take = sorted(rng.permutation(len(pool))[:per_class].tolist())
        texts.extend(pool[j] for j in take)
        labels.extend([i] * len(take))
    return texts, np.asarray(labels, np.int64), list(classes)


def debian_packages(per_class: int = 200, seed: int = 0,
                    sections: Tuple[str, ...] = PACKAGE_SECTIONS) -> Tuple[List[str], np.ndarray, List[str]]:
    """Package one-line descriptions labelled by Debian section (see the module notes)."""
    lists = sorted(p for p in APT_LISTS.glob("*_Packages*") if p.suffix in ("", ".lz4", ".gz", ".xz"))
    records: List[Tuple[str, str, str]] = []
    for p in lists:
        records.extend(_package_records(_read_list(p)))
    source = f"{len(lists)} apt lists in {APT_LISTS}"
    if not records:
        records = _package_records(DPKG_STATUS.read_text("utf-8", "replace"))
        source = str(DPKG_STATUS)
    texts, y, names = _balanced(records, sections, per_class, seed)
    print(f"debian_packages: {len(records)} package records from {source}; kept {len(texts)} texts, "
          f"class sizes {np.bincount(y, minlength=len(names)).tolist()} for {names}")
    return texts, y, names


def man_pages(per_class: int = 300, seed: int = 0, min_per_class: int = 100) -> Tuple[List[str], np.ndarray, List[str]]:
    """NAME lines of installed manual pages labelled by section (see the module notes)."""
    out = subprocess.run(["apropos", "-l", "."], capture_output=True, text=True, check=False).stdout
    records = []
    for line in out.splitlines():
        m = re.match(r"^(\S+) \((\d)[^)]*\)\s+- (.+)$", line)
        if m and m.group(3).strip() != "unknown subject":
            records.append((m.group(1), m.group(2), m.group(3).strip()))
    counts: Dict[str, int] = {}
    for _, s, _ in records:
        counts[s] = counts.get(s, 0) + 1
    classes = tuple(sorted(s for s, c in counts.items() if c >= min_per_class))
    texts, y, names = _balanced(records, classes, per_class, seed)
    print(f"man_pages: {len(records)} NAME lines from apropos; kept {len(texts)} texts, class sizes "
          f"{np.bincount(y, minlength=len(names)).tolist()} for sections {names}")
    return texts, y, names
