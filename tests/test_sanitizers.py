"""The C++ core's own tests (tests/cpp) built with AddressSanitizer + UndefinedBehaviorSanitizer
and run on every kernel set this CPU supports. Needs the source tree, CMake and a C++ compiler.

Slow tier: the instrumented build of the whole core takes minutes."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from embedcluster import _core

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def sanitizer_binary(tmp_path_factory):
    cmake = shutil.which("cmake")
    if cmake is None or not (ROOT / "CMakeLists.txt").exists():
        pytest.skip("needs cmake and the source tree (pip install cmake)")
    build = tmp_path_factory.mktemp("asan")
    gen = ["-G", "Ninja"] if shutil.which("ninja") else []
    subprocess.run([cmake, "-S", str(ROOT), "-B", str(build), *gen, "-DEMBEDCLUSTER_BUILD_TESTS=ON",
                    "-DEMBEDCLUSTER_SANITIZE=ON", "-DEMBEDCLUSTER_CUDA=OFF", "-DCMAKE_BUILD_TYPE=RelWithDebInfo"],
                   check=True, capture_output=True)
    subprocess.run([cmake, "--build", str(build), "--target", "ec_core_tests", "-j", "2"], check=True,
                   capture_output=True)
    return build / "ec_core_tests"


@pytest.mark.parametrize("isa", _core.build_info()["kernels_available"])
def test_core_is_clean_under_asan_and_ubsan(sanitizer_binary, isa):
    env = dict(os.environ, EMBEDCLUSTER_ISA=isa, ASAN_OPTIONS="detect_leaks=1:abort_on_error=0",
               UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1")
    r = subprocess.run([str(sanitizer_binary)], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "core tests passed" in r.stdout
    assert "runtime error" not in r.stderr and "AddressSanitizer" not in r.stderr
