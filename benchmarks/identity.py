#!/usr/bin/env python3
"""Show that two builds of embedcluster give bit-identical results, and how their times compare.

A restructuring of the engine must not change a single bit of its results. This script runs a
fixed set of seeded cases (k-means with both initialisations, the kNN self-join and one-sided
scan, radius search, DBSCAN) under every kernel set the CPU runs, in two builds, and compares
SHA-256 digests of every output array (labels, centres, neighbours, distances, core flags).

    # against the previous commit (its wheel is built once into a cached venv)
    python benchmarks/identity.py --against HEAD~1

    # against a build you already have, with alternating timed repeats
    python benchmarks/identity.py --against-python /path/to/venv/bin/python --repeats 5

The current build is the embedcluster that `python` imports. Exit status 1 when a digest
differs. Timings are medians of alternating runs (A, B, A, B, ...) in fresh processes, so a
busy machine slows both builds alike; compare the ratio column, not the seconds.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "embedcluster-identity"

# name -> (kind, parameters). Sizes are large enough to cross many tiles and thread blocks and
# to exercise pruning, small enough that the whole set runs in about a minute per kernel set.
CASES = {
    "kmeans++ 20k x 128 k=64": ("kmeans", dict(n=20_000, d=128, k=64, init="k-means++")),
    "kmeans|| 20k x 128 k=64": ("kmeans", dict(n=20_000, d=128, k=64, init="k-means||")),
    "kmeans 60k x 384 k=256": ("kmeans", dict(n=60_000, d=384, k=256, init="k-means++")),
    "knn self-join 8k x 384 k=10": ("knn_self", dict(n=8_000, d=384, k=10)),
    "knn one-sided 8k x 384 k=10": ("knn_query", dict(n=8_000, d=384, k=10)),
    "radius 4k x 64": ("radius", dict(n=4_000, d=64)),
    "dbscan 12k x 64": ("dbscan", dict(n=12_000, d=64, min_samples=5)),
    "dbscan 6k x 384": ("dbscan", dict(n=6_000, d=384, min_samples=10)),
}


def blobs(n: int, d: int, seed: int = 0, centres: int = 32):
    """Seeded Gaussian blobs: structure, near-ties and outliers, as embeddings have."""
    import numpy as np

    rng = np.random.default_rng(seed)
    means = rng.normal(size=(centres, d)).astype(np.float32) * 3.0
    which = rng.integers(0, centres, size=n)
    x = means[which] + rng.normal(size=(n, d)).astype(np.float32)
    return np.ascontiguousarray(x, dtype=np.float32)


def _digest(a) -> str:
    import numpy as np

    a = np.ascontiguousarray(a)
    return hashlib.sha256(str(a.dtype).encode() + str(a.shape).encode() + a.tobytes()).hexdigest()[:16]


def _eps_for(x, min_samples: int) -> float:
    """A radius at which DBSCAN finds clusters and noise: a quantile of k-th neighbour distances,
    computed with numpy (so the radius does not depend on the build under test)."""
    import numpy as np

    rng = np.random.default_rng(1)
    probe = x[rng.choice(len(x), 300, replace=False)].astype(np.float64)
    d2 = (probe**2).sum(1)[:, None] + (x.astype(np.float64) ** 2).sum(1)[None, :] - 2 * probe @ x.T.astype(np.float64)
    kth = np.sort(np.maximum(d2, 0.0), axis=1)[:, min_samples]
    return float(np.sqrt(np.quantile(kth, 0.5)))


def run_case(kind: str, p: dict) -> tuple[dict[str, str], float]:
    """Runs one case in this process with the build it imports; digests of outputs and seconds."""
    from embedcluster import _core

    x = blobs(p["n"], p["d"])
    t0 = time.perf_counter()
    if kind == "kmeans":
        r = _core.kmeans_fit(x, p["k"], max_iter=20, tol=0.0, init=p["init"], seed=3)
        out = {"centers": r.centers, "labels": r.labels, "inertia": repr(r.inertia), "n_iter": r.n_iter}
    elif kind in ("knn_self", "knn_query"):
        dist, idx = _core.knn_search(x, x, p["k"], self_join=kind == "knn_self")
        out = {"distances": dist, "indices": idx}
    elif kind == "radius":
        q = blobs(p["n"] // 4, p["d"], seed=5)
        eps = _eps_for(x, 8)
        lims, idx, dist = _core.radius_search(x, q, eps * eps)
        out = {"limits": lims, "indices": idx, "distances": dist}
    elif kind == "dbscan":
        eps = _eps_for(x, p["min_samples"])
        r = _core.dbscan_fit(x, eps, min_samples=p["min_samples"])
        out = {"labels": r.labels, "is_core": r.is_core, "counts": r.counts, "n_clusters": r.n_clusters}
    else:
        raise ValueError(kind)
    seconds = time.perf_counter() - t0
    return {k: v if isinstance(v, (str, int)) else _digest(v) for k, v in out.items()}, seconds


def worker(isa: str, cases: list[str]) -> None:
    """Child process: one build, one kernel set; prints JSON {case: {digests, seconds}}."""
    from embedcluster import _core

    _core.select_kernels(isa)
    result = {}
    for name in cases:
        kind, p = CASES[name]
        digests, seconds = run_case(kind, p)
        result[name] = {"digests": digests, "seconds": seconds}
    print(json.dumps(result))


def run_worker(python: str, isa: str, cases: list[str]) -> dict:
    cmd = [python, str(Path(__file__).resolve()), "--worker", isa, "--cases", ",".join(cases)]
    env = dict(os.environ, PYTHONPATH="")  # the build under test is the one `python` imports
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tempfile.gettempdir())
    if proc.returncode != 0:
        sys.exit(f"worker failed ({python}, {isa}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def build_revision(rev: str) -> str:
    """Installs the wheel of `rev` into a cached venv (once per commit); returns its python."""
    sha = subprocess.run(["git", "-C", str(REPO), "rev-parse", rev], capture_output=True, text=True, check=True)
    sha = sha.stdout.strip()
    venv = CACHE / sha[:12]
    python = venv / "bin" / "python"
    if python.exists() and (venv / ".installed").exists():
        return str(python)
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="ec-identity-") as tmp:
        src = Path(tmp) / "src"
        print(f"building {rev} ({sha[:12]}) into {venv} ...", file=sys.stderr)
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(src), sha], check=True,
                       capture_output=True)
        try:
            subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
            subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--no-build-isolation", "--no-deps",
                            str(src)], check=True)
        finally:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(src)], capture_output=True)
    (venv / ".installed").touch()
    return str(python)


def available_isas(python: str) -> list[str]:
    code = "from embedcluster import _core; import json; print(json.dumps(_core.build_info()['kernels_available']))"
    out = subprocess.run([python, "-c", code], capture_output=True, text=True, check=True,
                         cwd=tempfile.gettempdir(), env=dict(os.environ, PYTHONPATH=""))
    return json.loads(out.stdout)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    who = ap.add_mutually_exclusive_group()
    who.add_argument("--against", metavar="REV", default="HEAD~1", help="git revision to build and compare with")
    who.add_argument("--against-python", metavar="PY", help="python of an installed build to compare with")
    ap.add_argument("--python", default=sys.executable, help="python of the build under test (default: this one)")
    ap.add_argument("--isa", default="all", help="kernel sets, comma-separated (default: all both builds run)")
    ap.add_argument("--cases", default=",".join(CASES), help="cases, comma-separated")
    ap.add_argument("--repeats", type=int, default=1, help="alternating timed runs per build (median)")
    ap.add_argument("--json", metavar="FILE", help="write the digests and timings here")
    ap.add_argument("--worker", metavar="ISA", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        ap.error(f"unknown cases {unknown}; known: {list(CASES)}")
    if args.worker:
        worker(args.worker, cases)
        return 0

    base = args.against_python or build_revision(args.against)
    isas = available_isas(args.python) if args.isa == "all" else args.isa.split(",")
    if args.isa == "all":
        isas = [i for i in isas if i in available_isas(base)]
    report, differ = {}, 0
    print(f"current: {args.python}\nbaseline: {base}\n")
    print(f"{'kernel set':<12} {'case':<30} {'identical':<10} {'current s':>10} {'baseline s':>10} {'ratio':>6}")
    for isa in isas:
        runs: dict[str, list[dict]] = {"current": [], "baseline": []}
        for _ in range(max(1, args.repeats)):
            runs["current"].append(run_worker(args.python, isa, cases))
            runs["baseline"].append(run_worker(base, isa, cases))
        for name in cases:
            cur = [r[name] for r in runs["current"]]
            ref = [r[name] for r in runs["baseline"]]
            same = all(c["digests"] == ref[0]["digests"] for c in cur + ref)
            differ += not same
            t_cur = statistics.median(c["seconds"] for c in cur)
            t_ref = statistics.median(r["seconds"] for r in ref)
            print(f"{isa:<12} {name:<30} {'yes' if same else 'NO':<10} {t_cur:>10.3f} {t_ref:>10.3f} "
                  f"{t_cur / t_ref:>6.2f}")
            if not same:
                for key in cur[0]["digests"]:
                    if cur[0]["digests"][key] != ref[0]["digests"].get(key):
                        print(f"    {key}: {cur[0]['digests'][key]} != {ref[0]['digests'].get(key)}")
            report[f"{isa}/{name}"] = {"identical": same, "current": cur, "baseline": ref}
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    print(f"\n{'all identical' if not differ else f'{differ} case(s) DIFFER'}")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
