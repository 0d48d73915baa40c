"""What this installation is: version, build options, CPU features, threads, backends."""

from __future__ import annotations

import os
import platform
from typing import Any, Dict

from ._backend import _CORE_ERROR, _core, faiss_available
from ._version import __version__


def build_info(d: int = 384) -> Dict[str, Any]:
    """A dict describing the installation (also printed by ``embedcluster info``).

    Keys: version, python, platform, native (bool), native_error, build (the engine's own
    report: compiler, flags, OpenMP, CUDA, kernel sets available and active, CPU features),
    kernels (``_core.kernel_choice(d)``: each kernel set's self-test and, per operation family,
    the set chosen and the rates measured at depth ``d``; empty without the engine),
    kernel_warnings (kernel sets disabled by their self-test), cuda (the CUDA engine: compiled,
    available, why_not, device), backends (available backend names), cpu_count, environment.
    """
    if isinstance(d, bool) or not isinstance(d, int) or d < 1:
        raise ValueError(f"d={d!r} should be an integer >= 1 (the depth to measure the kernel sets at)")
    info: Dict[str, Any] = {
        "version": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "native": _core is not None,
        "native_error": _CORE_ERROR,
        "build": _core.build_info() if _core is not None else {},
        "kernels": dict(_core.kernel_choice(d)) if _core is not None else {},
        "kernel_warnings": _core.kernel_warnings() if _core is not None else [],
    }
    from . import cuda

    cuda_ok, cuda_why = cuda.available()
    info["cuda"] = {"compiled": cuda.compiled(), "available": cuda_ok, "why_not": cuda_why,
                    "device": cuda.device_summary() if cuda_ok else ""}
    backends = (["native"] if _core is not None else []) + (["faiss"] if faiss_available() else [])
    info["backends"] = backends + (["cuda"] if cuda_ok else [])
    env = {k: v for k, v in os.environ.items() if k.startswith(("EMBEDCLUSTER_", "OMP_", "OPENBLAS_"))}
    info["environment"] = env
    return info
