"""What this installation is: version, build options, CPU features, threads, backends."""

from __future__ import annotations

import os
import platform
from typing import Any, Dict

from ._backend import _CORE_ERROR, _core, faiss_available
from ._version import __version__


def build_info() -> Dict[str, Any]:
    """A dict describing the installation (also printed by ``embedcluster info``).

    Keys: version, python, platform, native (bool), native_error, build (the engine's own
    report: compiler, flags, OpenMP, CUDA, kernel sets available and active, CPU features),
    backends (available backend names), cpu_count.
    """
    info: Dict[str, Any] = {
        "version": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "native": _core is not None,
        "native_error": _CORE_ERROR,
        "build": _core.build_info() if _core is not None else {},
    }
    backends = (["native"] if _core is not None else []) + (["faiss"] if faiss_available() else [])
    info["backends"] = backends
    env = {k: v for k, v in os.environ.items() if k.startswith(("EMBEDCLUSTER_", "OMP_", "OPENBLAS_"))}
    info["environment"] = env
    return info
