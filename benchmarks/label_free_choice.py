#!/usr/bin/env python
"""How well the label-free choices of ``embedcluster.transfer.select`` do, on labelled sets.

Parts (``--parts``):

* ``method``: one representation at its true k; k-means and the SCAN head, scored as
  ``select_clustering`` scores them (stability over 4 seeded 80% subsamples, neighbour
  consistency on the 10-NN graph); prints each method's ACC, the old rule's pick (highest
  consistency) and the current one's (SCAN unless k-means' stability < 0.6).
* ``layer``: raw pixels + the 8 default taps of EfficientNet-Lite0 (-Lite1, -Lite2 on some
  sets), k-means, selection seeds 0, 1 and 2: what ``select_clustering`` returns (the consensus
  of all layers' partitions, each counted by its relative neighbour consistency to the power 8 or
  16, whichever consensus keeps more neighbours together; with ``class_sizes="auto"``, the
  default, the k-means consensus or its relabelling by the partitions' vote, whichever scores the
  higher separation x stability), each of those two consensuses alone (``class_sizes="similar"``
  and ``"unequal"``) and the single layer it picks with ``consensus=False``, against the best
  layer at the same seed; per seed and the mean of the seeds.
* ``imbalance``: the ``layer`` part on the same sets subsampled to 8:1 class imbalance (class sizes
  falling geometrically from the largest to 1/8 of it, seeded): how the layer choice holds when
  the classes are of very different sizes.
* ``draws``: the same on the ``k`` part's 12 sets at other ratios and other draws (``DRAWS``: 8:1,
  4:1 and 16:1, each with its own seeded class order and points), selection seeds 0 and 1.
* ``k``: k unknown: the ``layer`` part's representations of 12 of its sets, k among ``run
  --select auto``'s default values (5, 8, 10, 12, 15), selection seeds 0, 1 and 2: the k and ACC chosen
  (the consensus at the k where the single layers' winner scores highest) against the best
  candidate of every layer and k, the consensus at the true k, and two rules tried, computed from
  the same rows: the k where the consensus' own separation x stability is highest, and where its
  neighbour consistency is.
* ``encoders``: several encoders on the same images (``ENCODER_SETS``: digits and Fashion-MNIST
  samples, Lite0 with Lite1 or Lite2, two sets with all three), raw + every tap of each, k-means at
  the true k, selection seeds 0, 1 and 2: the choice over all of them (``run --select auto
  --encoder a,b``: the consensus of every encoder's taps) and each encoder's own choice (raw + its
  taps), against the best single layer of any encoder; the encoder the deployed pipeline embeds with.

Sets: all-MiniLM-L6-v2 on the corpora of ``text_corpora.py`` (Debian package descriptions by
section, several section lists; manual-page NAME lines), Fashion-MNIST (Debian's
``dataset-fashion-mnist``) and scikit-learn's digits through Lite0 at several sizes, and
class-imbalanced subsamples (sizes falling geometrically from the largest class to 1/ratio of
it, seeded). ``--quick`` runs one set per part. Labels only score; nothing is chosen on them.

Run::

    python benchmarks/label_free_choice.py --parts method layer      # about an hour on 2 cores
    python benchmarks/label_free_choice.py --parts imbalance         # about 20 minutes
    python benchmarks/label_free_choice.py --parts draws             # about 20 minutes
    python benchmarks/label_free_choice.py --parts k                 # about a minute per set and seed alone
    python benchmarks/label_free_choice.py --parts encoders          # about 20 minutes alone

Output: Markdown tables on stdout and ``<out>/label_free_choice.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # OpenMP spin-waiting stalls torch on shared cores

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
try:
    import embedcluster  # noqa: F401
except ImportError:  # running from a checkout without PYTHONPATH=python
    sys.path.insert(0, str(REPO / "python"))

from embedcluster.bench import cpu_info  # noqa: E402
from embedcluster.metrics import cluster_accuracy  # noqa: E402
from embedcluster.cli.run import DEFAULT_SELECT_K  # noqa: E402
from embedcluster.transfer.select import CONSENSUS, _choose, candidate_representations, select_clustering  # noqa: E402,E501

WEAK = 0.6
WEIGHTING_CHOSEN_ON = 18  # layer_sets(): the separation weighting was chosen on the sets before this index,
STABILITY_CHOSEN_ON = 25  # and its stability factor and the consistency weighting's powers on the sets before this one
K_SETS = (0, 2, 4, 6, 8, 11, 13, 14, 16, 20, 24, 29)  # layer_sets() indices of the k part: digits and Fashion, Lite0-2
TEXT_SECTIONS = {
    "topical": None,  # text_corpora.PACKAGE_SECTIONS
    "system": ("admin", "devel", "libs", "net", "utils", "web", "x11", "text", "doc", "kernel", "shells", "vcs"),
    "languages": ("python", "perl", "java", "ruby", "javascript", "lisp", "ocaml", "haskell", "golang", "rust",
                  "php", "gnu-r"),
}


def imbalanced(y: np.ndarray, ratio: float, seed: int) -> np.ndarray:
    """Row indices keeping class sizes that fall geometrically from the largest to 1/ratio."""
    rng = np.random.default_rng(seed)
    classes = rng.permutation(np.unique(y))
    top = np.bincount(y).max()
    keep: List[int] = []
    for rank, c in enumerate(classes):
        m = int(round(top * ratio ** (-rank / (len(classes) - 1))))
        idx = np.flatnonzero(y == c)
        keep.extend(rng.choice(idx, min(m, len(idx)), replace=False).tolist())
    return np.sort(np.asarray(keep))


def text_embeddings(corpus: str, per_class: int, seed: int) -> Tuple[np.ndarray, np.ndarray]:
    import text_corpora

    from embedcluster.encoders import load_encoder

    if corpus == "man":
        texts, y, _ = text_corpora.man_pages(per_class=per_class, seed=seed)
    else:
        sections = TEXT_SECTIONS[corpus] or text_corpora.PACKAGE_SECTIONS
        texts, y, _ = text_corpora.debian_packages(per_class=per_class, seed=seed, sections=sections)
    Z = load_encoder("all-MiniLM-L6-v2", device="cpu").encode(texts, progress=False)
    return np.asarray(Z, np.float32), np.unique(y, return_inverse=True)[1]


def image_candidates(source: str, n: int, size: int, seed: int, invert: bool = False,
                     encoder: Any = "efficientnet-lite0") -> Tuple[Dict[str, Any], Any]:
    """raw + the default taps of ``encoder`` (EfficientNet-Lite0, 1 or 2, or a list of them) of ``n``
    seeded Fashion-MNIST images (``fashion-test`` / ``fashion-train``) or of all 1,797 digits
    (``digits``)."""
    from embedcluster.data import Dataset, load, load_fashion_mnist

    if source == "digits":
        ds = load("digits")
    else:
        fm = load_fashion_mnist(source.split("-")[1])
        idx = np.random.default_rng(seed).choice(len(fm.X), n, replace=False)
        ds = Dataset(X=np.asarray(fm.X)[idx], y=np.asarray(fm.y)[idx], kind="images")
    options: Dict[str, Any] = {"image_size": size, **({"invert": True} if invert else {})}
    cands = candidate_representations(ds, encoder, encoder_options=options, progress=False)
    return {name: Z for name, (Z, _) in cands.items()}, np.asarray(ds.y)


def method_sets(quick: bool) -> List[Tuple[str, np.ndarray, np.ndarray]]:
    """(description, Z, y) of the method part."""
    out = []
    Z, y = text_embeddings("topical", 200, 0)
    out.append(("Debian descriptions, 12 topical sections", Z, y))
    if quick:
        return out
    keep = imbalanced(y, 8.0, 1)
    out.append(("same at 8:1", Z[keep], y[keep]))
    for corpus, per, seed in (("topical", 150, 1), ("system", 200, 2), ("languages", 200, 3), ("man", 300, 0)):
        Z, y = text_embeddings(corpus, per, seed)
        out.append((f"{corpus} texts ({per} per class, seed {seed})", Z, y))
    for source, n, size, seed, taps in (("fashion-test", 2000, 64, 0, ("head", "block14", "block10")),
                                        ("fashion-test", 2000, 96, 0, ("head", "block15", "block10")),
                                        ("fashion-train", 3000, 64, 5, ("head", "block14", "block10")),
                                        ("fashion-test", 2000, 128, 7, ("head", "block15")),
                                        ("digits", 0, 32, 0, ("raw", "block7"))):
        reps, y = image_candidates(source, n, size, seed)
        for tap in taps:
            Z = reps[tap if tap == "raw" else f"efficientnet-lite0 {tap}"]
            out.append((f"{source} {n or len(y)} at {size} px, {tap}", Z, y))
            keep = imbalanced(y, 8.0, 1)
            out.append(("same at 8:1", Z[keep], y[keep]))
    return out


def method_part(quick: bool) -> List[Dict[str, Any]]:
    results = []
    for desc, Z, y in method_sets(quick):
        k = int(len(np.unique(y)))
        start = time.perf_counter()
        sel = select_clustering({"r": Z}, k, ["kmeans", "scan"], seed=0)
        rows = {r["method"]: r for r in sel.rows}
        acc = {m: float(cluster_accuracy(y, sel.all_labels[("r", k, m)])) for m in rows}
        old = max(rows, key=lambda m: rows[m]["consistency"])
        new = "scan" if rows["kmeans"]["stability"] >= WEAK else "kmeans"
        results.append({"set": desc, "n": int(len(y)), "k": k, "acc": acc, "old": old, "new": new,
                        "chosen": sel.choice["method"], "seconds": time.perf_counter() - start,
                        **{f"{m}_{s}": float(rows[m][s]) for m in rows for s in ("stability", "consistency")}})
        print(f"{desc}: k-means {acc['kmeans']:.3f} SCAN {acc['scan']:.3f}; old {old}, new {new}", flush=True)
    return results


def layer_sets(quick: bool) -> List[Tuple[str, str, int, int, int, bool, str]]:
    """(description, source, n, image size, data seed, inverted, encoder) of the layer parts; the
    five from "Lite1: Fashion test 2,000" were added after the consensus' rules were set, the seven
    from "Fashion test 2,000 (seed 31)" after its separation weighting was chosen on the 18 before
    them, the last six after its stability factor was chosen on the 25 before them."""
    lite0 = "efficientnet-lite0"
    sets = [("digits at 32 px", "digits", 0, 32, 0, False, lite0),
            ("Fashion test 1,000 at 64 px", "fashion-test", 1000, 64, 0, False, lite0)]
    if quick:
        return sets[:1]
    return sets + [("Fashion test 2,000 at 64 px", "fashion-test", 2000, 64, 0, False, lite0),
                   ("same, inverted", "fashion-test", 2000, 64, 0, True, lite0),
                   ("Fashion test 2,000 at 96 px", "fashion-test", 2000, 96, 0, False, lite0),
                   ("same at 128 px", "fashion-test", 2000, 128, 0, False, lite0),
                   ("digits at 48 px", "digits", 0, 48, 0, False, lite0),
                   ("digits at 64 px", "digits", 0, 64, 0, False, lite0),
                   ("Fashion test 2,000 (seed 7) at 64 px", "fashion-test", 2000, 64, 7, False, lite0),
                   ("same at 96 px", "fashion-test", 2000, 96, 7, False, lite0),
                   ("Fashion test 3,000 (seed 3) at 80 px", "fashion-test", 3000, 80, 3, False, lite0),
                   ("Fashion train 2,000 (seed 11) at 64 px, inverted", "fashion-train", 2000, 64, 11, True, lite0),
                   ("same at 96 px", "fashion-train", 2000, 96, 11, True, lite0),
                   ("Lite1: Fashion test 2,000 (seed 21) at 64 px", "fashion-test", 2000, 64, 21, False,
                    "efficientnet-lite1"),
                   ("Lite1: digits at 40 px", "digits", 0, 40, 0, False, "efficientnet-lite1"),
                   ("Lite2: Fashion train 2,000 (seed 23) at 80 px", "fashion-train", 2000, 80, 23, False,
                    "efficientnet-lite2"),
                   ("Lite2: digits at 32 px", "digits", 0, 32, 0, False, "efficientnet-lite2"),
                   ("Fashion test 1,500 (seed 25) at 96 px, inverted", "fashion-test", 1500, 96, 25, True, lite0),
                   ("Fashion test 2,000 (seed 31) at 72 px", "fashion-test", 2000, 72, 31, False, lite0),
                   ("Lite1: Fashion train 2,500 (seed 33) at 64 px, inverted", "fashion-train", 2500, 64, 33, True,
                    "efficientnet-lite1"),
                   ("digits at 56 px", "digits", 0, 56, 0, False, lite0),
                   ("Lite2: Fashion train 1,500 (seed 35) at 96 px", "fashion-train", 1500, 96, 35, False,
                    "efficientnet-lite2"),
                   ("Lite2: Fashion test 2,000 (seed 37) at 64 px, inverted", "fashion-test", 2000, 64, 37, True,
                    "efficientnet-lite2"),
                   ("Lite1: digits at 64 px", "digits", 0, 64, 0, False, "efficientnet-lite1"),
                   ("Fashion test 2,500 (seed 39) at 112 px", "fashion-test", 2500, 112, 39, False, lite0),
                   ("digits at 40 px", "digits", 0, 40, 0, False, lite0),
                   ("Lite2: digits at 56 px", "digits", 0, 56, 0, False, "efficientnet-lite2"),
                   ("digits at 72 px, inverted", "digits", 0, 72, 0, True, lite0),
                   ("Lite1: Fashion test 1,000 (seed 41) at 80 px, inverted", "fashion-test", 1000, 80, 41, True,
                    "efficientnet-lite1"),
                   ("Fashion train 3,000 (seed 43) at 56 px", "fashion-train", 3000, 56, 43, False, lite0),
                   ("Lite2: Fashion test 2,500 (seed 45) at 112 px", "fashion-test", 2500, 112, 45, False,
                    "efficientnet-lite2")]


def layer_part(quick: bool, seeds: Tuple[int, ...] = (0, 1, 2), ratio: Optional[float] = None,
               draw: int = 1, set_indices: Optional[Tuple[int, ...]] = None) -> List[Dict[str, Any]]:
    """Per set and selection seed: every layer's k-means ACC, the consensus (the choice, with
    ``class_sizes="auto"``), the two consensuses it chose between (``"similar"``: the k-means
    consensus; ``"unequal"``: relabelled by the vote; each as that ``class_sizes`` alone returns it)
    and the single layer chosen with ``consensus=False``. A seed is one draw of k-means' local
    optima (the best layer's ACC moves by up to 0.06 between seeds), so the tables give each seed
    and the mean of the seeds, as the issue measures. ``ratio``: each set is first subsampled to
    that class imbalance (:func:`imbalanced`, seeded ``draw``). ``set_indices``: only these of
    :func:`layer_sets`."""
    results = []
    for set_index, (desc, source, n, size, data_seed, invert, encoder) in enumerate(layer_sets(quick)):
        if set_indices is not None and set_index not in set_indices:
            continue
        reps, y = image_candidates(source, n, size, data_seed, invert, encoder)
        if ratio is not None:
            keep = imbalanced(y, ratio, draw)
            reps, y = {name: Z[keep] for name, Z in reps.items()}, y[keep]
            desc = f"{desc}, {ratio:g}:1 (draw {draw}, {len(y)} points)" if draw != 1 else \
                f"{desc}, {ratio:g}:1 ({len(y)} points)"
        k = int(len(np.unique(y)))
        for seed in seeds:
            start = time.perf_counter()
            sel = select_clustering(reps, k, ["kmeans"], seed=seed)  # the choice: the consensus of every layer
            seconds = time.perf_counter() - start
            kinds = sel.consensus_kinds[(CONSENSUS, k, "kmeans")]
            # Choosing one layer (what consensus=False returns): the same choice on the same
            # single-layer rows, without fitting every layer a second time.
            one_row, _ = _choose([dict(r) for r in sel.rows if r["representation"] != CONSENSUS], [k], 0.8,
                                 {"kmeans": "kmeans"}, 0.6)
            acc = {name: float(cluster_accuracy(y, sel.all_labels[(name, k, "kmeans")])) for name in reps}
            cons = float(cluster_accuracy(y, sel.labels))
            best = max(acc, key=lambda name: acc[name])
            results.append({"set": desc, "set_index": set_index, "seed": seed, "acc": acc, "best": best,
                            "chosen": one_row["representation"],
                            "consensus": cons, "consensus_chosen": sel.choice["representation"] == "consensus",
                            "consensus_kind": sel.choice.get("consensus_kind"),
                            "consensus_similar": float(cluster_accuracy(y, kinds["similar"])),
                            "consensus_unequal": float(cluster_accuracy(y, kinds["unequal"])),
                            "kinds": sel.choice.get("kinds"),
                            "weights": sel.choice.get("weights", {}),
                            "consistency_power": sel.choice.get("consistency_power"),
                            "seconds": seconds})
            print(f"{desc}, seed {seed}: best {best} {acc[best]:.3f}; one layer {one_row['representation']} "
                  f"{acc[one_row['representation']]:.3f}; consensus {cons:.3f} ({results[-1]['consensus_kind']}, "
                  f"power {results[-1]['consistency_power']}, {seconds:.0f} s); k-means consensus "
                  f"{results[-1]['consensus_similar']:.3f}, voted {results[-1]['consensus_unequal']:.3f}", flush=True)
    return results


#: (ratio, draw) of the ``draws`` part: other imbalance ratios and other draws of the classes' order
#: and points than the ``imbalance`` part's (8:1, draw 1), on the sets of the ``k`` part, seeds 0 and 1.
DRAWS = ((8.0, 2), (4.0, 3), (16.0, 4))


#: (description, source, n, image size, data seed, inverted, encoders) of the encoders part: the
#: images of layer sets, each with Lite0 and the encoder it was measured with there, and two with all three.
ENCODER_SETS = [("digits at 32 px", "digits", 0, 32, 0, False, ("efficientnet-lite0", "efficientnet-lite2")),
                ("digits at 40 px", "digits", 0, 40, 0, False, ("efficientnet-lite0", "efficientnet-lite1")),
                ("digits at 56 px", "digits", 0, 56, 0, False, ("efficientnet-lite0", "efficientnet-lite2")),
                ("digits at 64 px", "digits", 0, 64, 0, False, ("efficientnet-lite0", "efficientnet-lite1")),
                ("Fashion test 2,000 (seed 21) at 64 px", "fashion-test", 2000, 64, 21, False,
                 ("efficientnet-lite0", "efficientnet-lite1")),
                ("Fashion test 2,000 at 64 px", "fashion-test", 2000, 64, 0, False,
                 ("efficientnet-lite0", "efficientnet-lite2")),
                ("Fashion test 2,000 (seed 37) at 64 px, inverted", "fashion-test", 2000, 64, 37, True,
                 ("efficientnet-lite0", "efficientnet-lite2")),
                ("Fashion train 2,500 (seed 33) at 64 px, inverted", "fashion-train", 2500, 64, 33, True,
                 ("efficientnet-lite0", "efficientnet-lite1")),
                ("digits at 48 px", "digits", 0, 48, 0, False,
                 ("efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2")),
                ("Fashion test 2,000 (seed 7) at 64 px", "fashion-test", 2000, 64, 7, False,
                 ("efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2"))]


def encoder_part(quick: bool, seeds: Tuple[int, ...] = (0, 1, 2)) -> List[Dict[str, Any]]:
    """Per set of ``ENCODER_SETS`` (the first with ``quick``) and selection seed: every layer's
    k-means ACC, the choice over all encoders, each encoder's own choice and the deployed encoder
    (the one whose taps carry the most consensus weight, as ``run`` deploys)."""
    from embedcluster.transfer.select import encoder_of, encoder_weights

    results = []
    for desc, source, n, size, data_seed, invert, encoders in ENCODER_SETS[:1] if quick else ENCODER_SETS:
        reps, y = image_candidates(source, n, size, data_seed, invert, list(encoders))
        k = int(len(np.unique(y)))
        for seed in seeds:
            start = time.perf_counter()
            sel = select_clustering(reps, k, ["kmeans"], seed=seed)
            seconds = time.perf_counter() - start
            acc = {name: float(cluster_accuracy(y, sel.all_labels[(name, k, "kmeans")])) for name in reps}
            own = {}
            for enc in encoders:
                mine = {name: Z for name, Z in reps.items() if name == "raw" or encoder_of(name, list(encoders)) == enc}
                own[enc] = float(cluster_accuracy(y, select_clustering(mine, k, ["kmeans"], seed=seed).labels))
            weights = sel.choice.get("weights", {})
            share = encoder_weights(weights, list(encoders))
            best = max(acc, key=lambda name: acc[name])
            results.append({"set": desc, "encoders": list(encoders), "seed": seed, "acc": acc, "best": best,
                            "choice": float(cluster_accuracy(y, sel.labels)),
                            "chosen": sel.choice["representation"], "own": own,
                            "deployed": max(share, key=lambda e: share[e]) if weights else None,
                            "weight_share": share, "seconds": seconds})
            print(f"{desc}, {'+'.join(e[-5:] for e in encoders)}, seed {seed}: best {best} {acc[best]:.3f}; "
                  f"choice over all {results[-1]['choice']:.3f} ({seconds:.0f} s); each encoder's own "
                  + ", ".join(f"{e[-5:]} {a:.3f}" for e, a in own.items()), flush=True)
    return results


def encoder_table(results: List[Dict[str, Any]]) -> List[str]:
    """One line per set: the best layer of any encoder, the gap of the choice over all encoders and
    of each encoder's own choice per seed and as the mean of the seeds, and the deployed encoder."""
    def short(e: Optional[str]) -> str:
        return (e or "none").replace("efficientnet-", "")

    def share(r: Dict[str, Any]) -> float:
        return r["weight_share"].get(r["deployed"], 0.0) / max(sum(r["weight_share"].values()), 1e-300)

    by_set: Dict[str, List[Dict[str, Any]]] = {}
    for r in results:
        by_set.setdefault(r["set"], []).append(r)
    lines = ["| set | encoders | best layer of any encoder, per seed | the choice over all encoders: gap per seed, "
             "mean | each encoder's own choice: mean gap | deployed encoder (share of the weight on encoder taps) |",
             "|---|---|---|---|---|---|"]
    single: List[float] = []
    means: List[float] = []
    own_means: Dict[str, List[float]] = {}
    for desc, runs in by_set.items():
        gaps = [r["choice"] - r["acc"][r["best"]] for r in runs]
        single += gaps
        means.append(float(np.mean(gaps)))
        own = {e: float(np.mean([r["own"][e] - r["acc"][r["best"]] for r in runs])) for e in runs[0]["encoders"]}
        for e, g in own.items():
            own_means.setdefault("first" if e == runs[0]["encoders"][0] else "other", []).append(g)
        encs = runs[0]["encoders"]
        bests = " / ".join(f"{r['acc'][r['best']]:.3f}" for r in runs)
        lines.append(f"| {desc} | {' + '.join(short(e) for e in encs)} | {bests} | "
                     f"{' / '.join(f'{g:+.3f}' for g in gaps)}, mean {_mean_gap(means[-1])} | "
                     + ", ".join(f"{short(e)}: {_mean_gap(own[e])}" for e in encs) + " | "
                     + ", ".join(f"{short(r['deployed'])} ({share(r):.0%})" for r in runs) + " |")
    lines += ["", f"the choice over all encoders: within 0.02 of the best layer of any encoder on "
              f"{sum(g >= -0.02 for g in single)}/{len(single)} single seeds and {sum(m >= -0.02 for m in means)}/"
              f"{len(means)} sets' means, mean gap {np.mean(means):+.3f}, worst single seed {min(single):+.3f}; "
              f"Lite0's own choice {sum(g >= -0.02 for g in own_means['first'])}/{len(own_means['first'])} sets' "
              f"means, the other encoders' {sum(g >= -0.02 for g in own_means['other'])}/{len(own_means['other'])}", ""]
    return lines


def _k_by_consensus(rows: List[Dict[str, Any]], ks: List[int], key: str) -> int:
    """A rule tried for k: the k whose consensus row has the highest ``key`` (stability on a tie)."""
    at = {r["k"]: r for r in rows if r["representation"] == CONSENSUS}
    return int(max(ks, key=lambda k: (at[k][key], at[k]["stability"])))


def k_part(quick: bool, seeds: Tuple[int, ...] = (0, 1, 2)) -> List[Dict[str, Any]]:
    """Per set of ``K_SETS`` (the first with ``quick``) and selection seed:
    select_clustering over the default k values; every candidate's ACC, the choice, the best
    candidate and the k of the rules tried."""
    results = []
    sets = layer_sets(False)
    for set_index in K_SETS[:1] if quick else K_SETS:
        desc, source, n, size, data_seed, invert, encoder = sets[set_index]
        reps, y = image_candidates(source, n, size, data_seed, invert, encoder)
        true_k = int(len(np.unique(y)))
        ks = list(DEFAULT_SELECT_K)
        for seed in seeds:
            start = time.perf_counter()
            sel = select_clustering(reps, ks, ["kmeans"], seed=seed)
            seconds = time.perf_counter() - start
            acc = {f"{rep}, k={k}": float(cluster_accuracy(y, labels))
                   for (rep, k, _), labels in sel.all_labels.items()}
            best = max(acc, key=lambda key: acc[key])
            chosen = f"{sel.choice['representation']}, k={sel.choice['k']}"
            tried = {"by_score": _k_by_consensus(sel.rows, ks, "score"),
                     "by_consistency": _k_by_consensus(sel.rows, ks, "consistency")}
            results.append({"set": desc, "set_index": set_index, "seed": seed, "true_k": true_k, "acc": acc,
                            "best": best, "chosen": chosen, "chosen_k": int(sel.choice["k"]),
                            **{col: f"{CONSENSUS}, k={k}" for col, k in tried.items()},
                            **{f"{col}_k": k for col, k in tried.items()},
                            "consensus_true_k": acc.get(f"{CONSENSUS}, k={true_k}"), "seconds": seconds,
                            "rows": [{c: r[c] for c in ("representation", "k", "stability", "separation",
                                                        "consistency", "score")} for r in sel.rows]})
            print(f"{desc}, k unknown, seed {seed}: chosen {chosen} {acc[chosen]:.3f}; best {best} {acc[best]:.3f}; "
                  f"the consensus' highest score at k={tried['by_score']}, highest consistency at "
                  f"k={tried['by_consistency']} ({seconds:.0f} s)", flush=True)
    return results


K_COLUMNS = {"chosen": "chosen: the consensus at the k where the single layers' winner scores highest",
             "by_score": "tried: k where the consensus' separation x stability is highest",
             "by_consistency": "tried: k where the consensus' neighbour consistency is highest"}


def k_table(results: List[Dict[str, Any]]) -> List[str]:
    """One line per set: each rule's k at each seed and its mean gap to the best candidate over the
    seeds; then each rule's totals over single seeds and over the sets' means."""
    by_set: Dict[str, List[Dict[str, Any]]] = {}
    for r in results:
        by_set.setdefault(r["set"], []).append(r)

    def gaps(runs: List[Dict[str, Any]], col: str) -> List[float]:
        return [r["acc"][r[col]] - r["acc"][r["best"]] for r in runs]

    lines = ["| set (true k) | seeds | best candidate's ACC | the consensus at the true k | "
             + " | ".join(K_COLUMNS.values()) + " |", "|---|---|---|---|" + "---|" * len(K_COLUMNS)]
    for desc, runs in by_set.items():
        at_true = [r["consensus_true_k"] for r in runs]
        true_cell = ("not a candidate" if None in at_true else " / ".join(f"{a:.3f}" for a in at_true))
        cells = [" / ".join(f"k={r[f'{col}_k']}" for r in runs)
                 + f", mean gap {_mean_gap(float(np.mean(gaps(runs, col))))}" for col in K_COLUMNS]
        lines.append(f"| {desc} ({runs[0]['true_k']}) | {'/'.join(str(r['seed']) for r in runs)} | "
                     + " / ".join(f"{r['acc'][r['best']]:.3f}" for r in runs) + f" | {true_cell} | "
                     + " | ".join(cells) + " |")
    lines.append("")
    for col, name in K_COLUMNS.items():
        single = gaps(results, col)
        means = [float(np.mean(gaps(runs, col))) for runs in by_set.values()]
        true = sum(r[f"{col}_k"] == r["true_k"] for r in results)
        lines.append(f"{name.split(':')[0]}, {name.split(': ')[1]}: within 0.02 of the best candidate on "
                     f"{sum(g >= -0.02 for g in single)}/{len(single)} single seeds and "
                     f"{sum(m >= -0.02 for m in means)}/{len(means)} sets' means, the true k {true}/{len(single)}, "
                     f"mean gap {np.mean(single):+.3f}")
    return lines + [""]


def _ok(a: float, best: float) -> str:
    return "yes" if a >= best - 0.02 else f"**no** ({a - best:+.3f})"


def _mean_gap(g: float) -> str:
    return f"{g:+.3f}" if g >= -0.02 else f"**{g:+.3f}**"


def method_table(method: List[Dict[str, Any]]) -> List[str]:
    lines = ["| set | k-means ACC | SCAN ACC | consistency k-means / SCAN | stability k-means / SCAN | "
             "highest consistency (old) | SCAN unless k-means stability < 0.6 (now) |",
             "|---|---|---|---|---|---|---|"]
    for r in method:
        a, best = r["acc"], max(r["acc"].values())
        lines.append(f"| {r['set']} | {a['kmeans']:.3f} | {a['scan']:.3f} | {r['kmeans_consistency']:.3f} / "
                     f"{r['scan_consistency']:.3f} | {r['kmeans_stability']:.3f} / {r['scan_stability']:.3f} | "
                     f"{r['old']}: {_ok(a[r['old']], best)} | {r['new']}: {_ok(a[r['new']], best)} |")
    n_old = sum(r["acc"][r["old"]] >= max(r["acc"].values()) - 0.02 for r in method)
    n_new = sum(r["acc"][r["new"]] >= max(r["acc"].values()) - 0.02 for r in method)
    return lines + ["", f"within 0.02 of the better method: old {n_old}/{len(method)}, now {n_new}/{len(method)}", ""]


def layer_table(layer: List[Dict[str, Any]]) -> List[str]:
    lines = ["| set | best layer, per seed | one layer chosen (consensus=False): gap per seed, mean | "
             "consensus of every layer, weighted by neighbour consistency (the choice, class_sizes='auto'): "
             "gap per seed, mean | its k-means consensus (class_sizes='similar'): gap per seed, mean | "
             "its voted consensus (class_sizes='unequal'): gap per seed, mean | voted kept |",
             "|---|---|---|---|---|---|---|"]
    sets: Dict[int, List[Dict[str, Any]]] = {}
    for r in layer:
        sets.setdefault(r["set_index"], []).append(r)
    columns: Dict[str, Tuple[List[float], List[float]]] = {c: ([], []) for c in ("one", "cons", "similar",
                                                                                "unequal")}
    for rs in sets.values():
        cells = []
        for col, value in (("one", lambda r: r["acc"][r["chosen"]]), ("cons", lambda r: r["consensus"]),
                           ("similar", lambda r: r["consensus_similar"]),
                           ("unequal", lambda r: r["consensus_unequal"])):
            gaps = [value(r) - r["acc"][r["best"]] for r in rs]
            columns[col][0].extend(gaps)
            columns[col][1].append(float(np.mean(gaps)))
            cells.append(f"{' / '.join(f'{g:+.3f}' for g in gaps)}, mean {_mean_gap(columns[col][1][-1])}")
        bests = " / ".join(f"{r['acc'][r['best']]:.3f}" for r in rs)
        voted = sum(r["consensus_kind"] == "unequal" for r in rs)
        lines.append(f"| {rs[0]['set']} | {bests} | {' | '.join(cells)} | {voted}/{len(rs)} |")

    def within(gaps: List[float]) -> str:
        return f"{sum(g >= -0.02 for g in gaps)}/{len(gaps)}"

    names = {"one": "one layer", "cons": "the choice (class_sizes='auto')",
             "similar": "class_sizes='similar'", "unequal": "class_sizes='unequal'"}
    lines += ["", "within 0.02 of the best layer, single seeds / means of the seeds / mean gap / worst single seed: "
              + "; ".join(f"{names[c]} {within(g)} / {within(m)} / {np.mean(m):+.3f} / {min(g):+.3f}"
                          for c, (g, m) in columns.items()),
              "", f"the voted consensus kept on {sum(r['consensus_kind'] == 'unequal' for r in layer)} of {len(layer)}",
              ""]
    for since, what in ((WEIGHTING_CHOSEN_ON, "the separation weighting"),
                        (STABILITY_CHOSEN_ON, "its stability factor and the consistency weighting's powers")):
        late = [i for i, index in enumerate(sets) if index >= since]
        if late and len(late) < len(sets):  # the sets the weighting was not chosen on
            lines += [f"the {len(late)} sets added after {what} was chosen, means of the seeds / mean gap: "
                      + "; ".join(f"{names[c]} {within([m[i] for i in late])} / {np.mean([m[i] for i in late]):+.3f}"
                                  for c, (_, m) in columns.items()), ""]
    return lines


def tables(method: List[Dict[str, Any]], layer: List[Dict[str, Any]], imbalance: List[Dict[str, Any]],
           k: Optional[List[Dict[str, Any]]] = None, encoders: Optional[List[Dict[str, Any]]] = None,
           draws: Optional[Dict[str, List[Dict[str, Any]]]] = None) -> str:
    lines: List[str] = []
    if method:
        lines += method_table(method)
    if layer:
        lines += layer_table(layer)
    if imbalance:
        lines += ["Classes at 8:1:", ""] + layer_table(imbalance)
    for name, rows in (draws or {}).items():
        lines += [f"Classes at {name}:", ""] + layer_table(rows)
    if k:
        lines += ["k unknown:", ""] + k_table(k)
    if encoders:
        lines += ["Several encoders:", ""] + encoder_table(encoders)
    return "\n".join(lines)


def main(argv: Any = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--parts", nargs="+", choices=["method", "layer", "imbalance", "draws", "k", "encoders"],
                    default=["method", "layer"])
    ap.add_argument("--quick", action="store_true", help="one set per part (a smoke run)")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "out")
    args = ap.parse_args(argv)
    import torch

    torch.manual_seed(0)
    started = time.time()
    method = method_part(args.quick) if "method" in args.parts else []
    layer = layer_part(args.quick) if "layer" in args.parts else []
    imbalance = layer_part(args.quick, ratio=8.0) if "imbalance" in args.parts else []
    draws = {f"{ratio:g}:1 (draw {draw})": layer_part(args.quick, (0, 1), ratio, draw,
                                                      None if args.quick else K_SETS)
             for ratio, draw in (DRAWS[:1] if args.quick else DRAWS)} if "draws" in args.parts else {}
    k = k_part(args.quick) if "k" in args.parts else []
    encoders = encoder_part(args.quick) if "encoders" in args.parts else []
    print(f"\nCPU: {cpu_info()['model']}, {os.cpu_count()} logical CPUs; torch {torch.__version__}; "
          f"{time.time() - started:.0f} s in all\n")
    print(tables(method, layer, imbalance, k, encoders, draws))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "label_free_choice.json").write_text(json.dumps(
        {"cpu": cpu_info()["model"], "method": method, "layer": layer, "imbalance": imbalance, "draws": draws,
         "k": k, "encoders": encoders}, indent=1,
        default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
