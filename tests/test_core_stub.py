"""python/embedcluster/_core.pyi lists exactly what embedcluster._core exposes: the same names,
the same members of each bound class, the same parameters (names, order, defaults) of each
function, and the keys of build_info()."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import embedcluster
from embedcluster import _core

STUB = Path(embedcluster.__file__).with_name("_core.pyi")
# Names the stub defines for its annotations only (type aliases, the TypedDict of build_info).
STUB_ONLY = {"_F32", "_I64", "_U8", "_U64", "_F64", "_MetricLike", "_Precision", "_MemoryLimit", "_Progress",
             "_BuildInfo", "_KernelSelfTest", "_KernelRate", "_KernelFamilyChoice", "_KernelChoice"}


def _stub() -> ast.Module:
    return ast.parse(STUB.read_text())


def _top_level(tree: ast.Module) -> dict:
    out = {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            out.setdefault(node.name, node)  # an @overload'ed function: its first form spells every parameter
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            out[node.target.id] = node
        elif isinstance(node, ast.Assign):
            for t in node.targets:
                if isinstance(t, ast.Name):
                    out[t.id] = node
    return out


def test_stub_and_py_typed_ship_with_the_package():
    assert STUB.is_file()
    assert STUB.with_name("py.typed").is_file()


def test_stub_names_equal_module_names():
    stub = set(_top_level(_stub())) - STUB_ONLY
    module = {n for n in dir(_core) if not n.startswith("__")} | {"__version__"}
    assert stub == module, f"only in the stub: {sorted(stub - module)}; only in _core: {sorted(module - stub)}"


@pytest.mark.parametrize("name", ["KMeansResult", "DbscanResult", "TileRate", "Metric"])
def test_stub_class_members_equal_bound_members(name):
    node = _top_level(_stub())[name]
    stub = set()
    for item in node.body:
        if isinstance(item, ast.FunctionDef):
            stub.add(item.name)
        elif isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
            stub.add(item.target.id)
    cls = getattr(_core, name)
    # Public members (fields, properties, enum values); dunder protocol methods are pybind11's.
    bound = {n for n in vars(cls) if not n.startswith("_")}
    stub = {n for n in stub if not n.startswith("_")}
    assert stub == bound, f"only in the stub: {sorted(stub - bound)}; only bound: {sorted(bound - stub)}"


def _bound_params(func) -> list:
    """(name, default text or None) of a pybind11 function, from its signature line."""
    line = func.__doc__.splitlines()[0]
    inner = line[line.index("(") + 1:line.rindex(")")]
    params = []
    for part in re.split(r",\s*(?=\w+:)", inner) if inner else []:
        name, _, rest = part.partition(":")
        default = rest.split(" = ", 1)[1] if " = " in rest else None
        params.append((name.strip(), default))
    return params


def _stub_params(node: ast.FunctionDef) -> list:
    args = node.args.args
    defaults = [None] * (len(args) - len(node.args.defaults)) + list(node.args.defaults)
    return [(a.arg, None if d is None else repr(ast.literal_eval(d))) for a, d in zip(args, defaults)]


def test_stub_function_parameters_equal_bound_parameters():
    for name, node in _top_level(_stub()).items():
        if not isinstance(node, ast.FunctionDef):
            continue
        bound = _bound_params(getattr(_core, name))
        stub = _stub_params(node)
        assert [n for n, _ in stub] == [n for n, _ in bound], name
        for (pname, sd), (_, bd) in zip(stub, bound):
            assert (sd is None) == (bd is None), (name, pname)
            if sd is not None:
                assert ast.literal_eval(sd) == ast.literal_eval(bd), (name, pname, sd, bd)


def test_build_info_keys_are_in_the_stub():
    node = _top_level(_stub())["_BuildInfo"]
    keys = {item.target.id for item in node.body if isinstance(item, ast.AnnAssign)}
    info = _core.build_info()
    assert set(info) <= keys, sorted(set(info) - keys)
    assert {"version", "openmp", "max_threads", "kernels_available", "kernels_active", "cpu_features"} <= set(info)


def test_results_are_typed_objects():
    import numpy as np

    X = np.random.default_rng(0).standard_normal((60, 4)).astype(np.float32)
    km = _core.kmeans_fit(X, 3, seed=0)
    assert isinstance(km, _core.KMeansResult) and km.centers.shape == (3, 4) and km.labels.dtype == np.int64
    db = _core.dbscan_fit(X, 1.0, 3)
    assert isinstance(db, _core.DbscanResult) and db.is_core.dtype == np.uint8 and db.counts.shape == (60,)
    assert "KMeansResult(" in repr(km) and "DbscanResult(" in repr(db)
    a = _core.knn_search(X, X, 3, _core.Metric.cosine)
    b = _core.knn_search(X, X, 3, "cosine")
    np.testing.assert_array_equal(a[1], b[1])
    with pytest.raises(ValueError, match="unknown metric 'euclid'"):
        _core.knn_search(X, X, 3, "euclid")


@pytest.mark.slow  # 34 s: mypy's start-up dominates; CI's slow tier runs it
def test_stubtest_agrees(tmp_path):
    """mypy's stubtest: every stub signature against the runtime module (when mypy is installed)."""
    import subprocess
    import sys

    pytest.importorskip("mypy.stubtest", reason="pip install mypy")
    allow = tmp_path / "allowlist.txt"
    # pybind11 classes have pybind11's metaclass; results are built by the engine, not by Python.
    allow.write_text("embedcluster._core.(DbscanResult|KMeansResult|Metric|TileRate|KMeansChunkStats|"
                     "KMeansChunkState|KMeansSeedState)\n"
                     "embedcluster._core.(DbscanResult|KMeansResult|TileRate|KMeansChunkStats).__init__\n")
    r = subprocess.run([sys.executable, "-m", "mypy.stubtest", "embedcluster._core", "--allowlist", str(allow)],
                       capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
