"""Version of the installed package (read from the package metadata, defined once in pyproject.toml)."""

from __future__ import annotations

try:
    from importlib.metadata import PackageNotFoundError, version

    __version__ = version("embedcluster")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0+unknown"
