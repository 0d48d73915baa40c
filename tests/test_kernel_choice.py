"""Kernel sets are admitted after a self-test, and each operation family uses the admitted set
measured fastest (csrc/core/kernel_choice.cpp); a forced set (EMBEDCLUSTER_ISA, select_kernels)
overrides the measurement; sets not yet proven on real hardware are never chosen automatically."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import embedcluster as ec
from embedcluster import _core
from embedcluster.cli import main

from conftest import HAS_AMX

FAMILIES = {"kmeans", "knn", "dbscan"}


def _python(code: str, **env: str) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if k not in ("EMBEDCLUSTER_ISA", "EMBEDCLUSTER_SELFTEST_FAIL")}
    full.update(env)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full)


def _python_json(code: str, **env: str):
    """Runs `code` in a fresh interpreter with `env`; the JSON its last output line holds."""
    r = _python(code, **env)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def _bucket(d: int) -> int:
    """The depth bucket a choice is cached under: the smallest b >= 4 with 2**b >= d."""
    return max(4, (d - 1).bit_length())


def _available() -> list:
    return list(_core.build_info()["kernels_available"])


def test_every_supported_set_passes_its_self_test():
    report = _core.kernel_choice()
    tests = report["self_tests"]
    assert [t["name"] for t in tests][0] == "generic"
    for t in tests:
        assert t["passed"] is True and t["failure"] == "", t
        assert 0.0 <= t["worst_error_ratio"] < 1.0
    names = [t["name"] for t in tests]
    # every supported set at import; a set used only when named (amx, the AMX model) once named
    assert names[:len(_available())] == _available()
    assert set(names[len(_available()):]) <= {"amx", "amx-model"}
    assert _core.kernel_warnings() == []


def test_choice_per_family_is_an_admitted_measured_set():
    _core.select_kernels("auto")
    report = _core.kernel_choice(1000)
    assert report["forced"] is None
    available = _available()
    # Depths share a choice per power-of-two bucket (513..1024 here): a family an earlier call in
    # this process measured at another depth of the bucket (784-d image rows) reports that depth.
    at_1000 = [f for f in report["families"] if 512 < f["d"] <= 1024 and f["family"] != "fp32"]
    assert {f["family"] for f in at_1000} == FAMILIES
    for f in at_1000:
        assert f["chosen"] in available and f["chosen"] not in report["manual_only"]
        names = [r["name"] for r in f["rates"]]
        assert f["chosen"] == names[0]  # the fastest measured
        assert sorted(names) == sorted(n for n in available if n not in report["manual_only"])
        ns = [r["ns_per_tile"] for r in f["rates"]]
        assert ns == sorted(ns) and all(r["gflops"] > 0 for r in f["rates"])
        rows, cols = f["tile"]
        assert rows > 0 and cols > 0
    # Cached per (family, depth bucket): asking again measures nothing new.
    assert len(_core.kernel_choice(1000)["families"]) == len(report["families"])
    assert len(_core.kernel_choice(900)["families"]) == len(report["families"])


def test_amx_is_never_chosen_automatically():
    report = _core.kernel_choice(64)
    assert "amx" in report["manual_only"]
    assert all(f["chosen"] != "amx" and "amx" not in [r["name"] for r in f["rates"]] for f in report["families"])
    # "amx" is manual-only, so it is never among the available (auto-choosable) sets; whether
    # forcing it works depends on the CPU's AMX features, which test_amx.py checks both ways.
    assert "amx" not in _available()
    if not HAS_AMX:
        with pytest.raises(ValueError, match="amx.*cannot run"):
            _core.select_kernels("amx")
    else:
        try:
            _core.select_kernels("amx")  # named, it runs
            assert _core.active_kernels() == "amx"
        finally:
            _core.select_kernels("auto")
        assert _core.active_kernels() != "amx"


def test_select_kernels_forces_every_family_and_auto_returns_to_measurement():
    first = _available()[0]
    try:
        _core.select_kernels(first)
        assert _core.kernel_choice()["forced"] == first
        assert _core.active_kernels() == first
    finally:
        _core.select_kernels("auto")
    assert _core.kernel_choice()["forced"] is None


def test_environment_forces_one_set_for_everything():
    forced = _available()[-1]
    code = ("import numpy as np, json, embedcluster as ec\nfrom embedcluster import _core\n"
            "x = np.random.default_rng(0).standard_normal((300, 40)).astype(np.float32)\n"
            "ec.KMeans(3, random_state=0).fit(x); ec.NearestNeighbors(n_neighbors=2).fit(x).kneighbors()\n"
            "print(json.dumps(_core.kernel_choice(40)))")
    report = _python_json(code, EMBEDCLUSTER_ISA=forced)
    assert report["forced"] == forced
    assert report["families"] == []  # nothing measured: the forced set runs everywhere


def test_precision_fp32_uses_an_fp32_set():
    _core.select_kernels("auto")
    rate = _core.tile_rate(16, 16, 32, precision="fp32", n_threads=1)
    assert "bf16" not in rate.kernels and rate.kernels in _available()
    fp32 = [f for f in _core.kernel_choice()["families"] if f["family"] == "fp32"]
    assert fp32 and fp32[0]["chosen"] == rate.kernels


def test_simulated_self_test_failure_disables_the_set_with_a_warning():
    available = _available()
    if len(available) < 2:
        pytest.skip("only the portable set: it stays as the last resort")
    victim = available[-1]
    code = ("import warnings, json\n"
            "with warnings.catch_warnings(record=True) as caught:\n"
            "    warnings.simplefilter('always')\n"
            "    import embedcluster as ec\n"
            "from embedcluster import _core\n"
            "import numpy as np\n"
            "msgs = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]\n"
            "try:\n"
            f"    _core.select_kernels({victim!r}); err = ''\n"
            "except ValueError as e:\n"
            "    err = str(e)\n"
            "x = np.random.default_rng(1).standard_normal((500, 24)).astype(np.float32)\n"
            "labels = ec.KMeans(4, random_state=0).fit(x).labels_.tolist()\n"
            "print(json.dumps({'warnings': msgs, 'error': err, 'available': _core.build_info()['kernels_available'],"
            " 'choice': _core.kernel_choice(24), 'kernel_warnings': _core.kernel_warnings(), 'labels': labels}))")
    out = _python_json(code, EMBEDCLUSTER_SELFTEST_FAIL=victim)
    assert len(out["warnings"]) == 1 and victim in out["warnings"][0] and "self-test" in out["warnings"][0]
    assert out["kernel_warnings"] and victim in out["kernel_warnings"][0]
    assert victim not in out["available"]
    assert "failed its self-test" in out["error"] and victim in out["error"]
    tests = {t["name"]: t for t in out["choice"]["self_tests"]}
    assert tests[victim]["passed"] is False and tests[victim]["failure"]
    assert all(f["chosen"] != victim for f in out["choice"]["families"])
    x = np.random.default_rng(1).standard_normal((500, 24)).astype(np.float32)
    assert out["labels"] == ec.KMeans(4, random_state=0).fit(x).labels_.tolist()  # same result without it

    r = _python("import embedcluster as ec, numpy as np; ec.KMeans(2).fit(np.eye(4, dtype=np.float32))",
                EMBEDCLUSTER_SELFTEST_FAIL=victim, EMBEDCLUSTER_ISA=victim)
    assert r.returncode != 0 and f"EMBEDCLUSTER_ISA={victim}" in r.stderr and "failed its self-test" in r.stderr

    r = subprocess.run([sys.executable, "-m", "embedcluster.cli", "info"], capture_output=True, text=True,
                       env=dict(os.environ, EMBEDCLUSTER_SELFTEST_FAIL=victim))
    assert r.returncode == 0, r.stderr
    assert f"{victim} FAILED" in r.stdout and "WARNING" in r.stdout


def test_info_reports_self_tests_and_choices(capsys):
    _core.select_kernels("auto")
    assert main(["info", "--dim", "200"]) == 0
    out = capsys.readouterr().out
    assert "self-test" in out and "kernel choice" in out
    # a family's choice is made once per depth bucket (powers of two), at the first depth asked
    # in it: an earlier test may have measured d=256 for this bucket
    for family in FAMILIES:
        assert any(line.split()[:1] == [family] and _bucket(int(line.split()[1][2:])) == _bucket(200)
                   for line in out.splitlines() if line.strip()), out
    info = ec.build_info(200)
    assert info["kernel_warnings"] == []
    at_200 = {f["family"]: f for f in info["kernels"]["families"] if _bucket(f["d"]) == _bucket(200)}
    assert set(at_200) >= FAMILIES
    with pytest.raises(ValueError, match="d=0"):
        ec.build_info(0)
    with pytest.raises(ValueError, match="d=-1"):
        _core.kernel_choice(-1)
