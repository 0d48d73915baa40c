"""Label-free choices: which representation, which k and which clustering method.

A user without labels has several candidate representations of the same points (raw
features, each layer tap of each encoder), perhaps several values of k, and several methods
(k-means, a SCAN / TEMI head, or any callable). :func:`select_clustering` clusters every
combination and scores it without labels on two counts:

* **stability**: the method is run ``n_runs`` times, each on a different random subsample
  (``subsample`` of the points) with a different seed; stability is the mean adjusted Rand
  index between every two runs on the points they share. A partition that reflects structure
  in the data comes back; one that cuts a blob arbitrarily does not.
* **separation in a common space**: the silhouette of the candidate's partition (of all points)
  in one space that every candidate shares: the concatenation of all the representations,
  each row-wise L2-normalised and weighted by ``1/sqrt(m)`` for ``m`` representations. The
  silhouette of each representation's own space would not compare across spaces (raw pixels
  and a 1280-d head have different geometries); in the shared space a partition scores well
  when it separates points that most representations agree are apart.

* **neighbour consistency in the common space**: the chance-adjusted share of the pairs of the
  exact ``n_neighbors``-nearest-neighbour graph of the common space (cosine similarity averaged
  over the representations) that the partition keeps in one cluster
  (:func:`neighbour_consistency`). It does not favour round clusters around centroids.

The choice is made in three steps. At each k, the candidates whose separation is at least
``separation_floor`` (0.8) of the best separation at that k are eligible, and the most
stable of them wins: stability compares partitions, so it compares across representations and
methods, and the floor keeps out partitions that are stable only because they cut smooth
low-level features (brightness, ink area) the same way every time: on Fashion-MNIST the first
blocks of an ImageNet network gave the most stable and the least accurate partitions.
Stability alone favours small k (two halves of anything come back), so across k the winners
are compared by ``score = max(separation, 0) * stability``. These two steps fix k, and
with one or two representations the representation. With k unknown the k chosen is the data's
most separated level, which is often not the labels' number of classes: on 12 labelled image
sets x 3 selection seeds (``benchmarks/label_free_choice.py --parts k``, k among 5, 8, 10, 12, 15)
it was within 0.02 ACC of the best candidate on 4 of 36. The Fashion-MNIST samples went to k=5
or 8 (footwear, bags, trousers, tops); the digits to 10 on 5 of 15 runs, the rest spread over 5-15,
whose scores tie within their seed-to-seed spread. k where the consensus itself scores highest
did little better (7 of 36). k where it keeps the most neighbours together did better there (12
of 36) but cannot rank coarse levels:
a partition that merges whole clusters keeps every neighbour pair, so it takes the coarsest (k=2
for four separated blobs).

With three or more representations (``consensus=True``, the default) no single one is chosen:
the candidate ``"consensus"`` is, for each k and method, the consensus (:func:`consensus_labels`:
k-means on the stacked one-hot memberships) of an ensemble of partitions: each representation's
fit, ``consensus_fits - 1`` more full fits of it with other seeds and its ``n_runs`` stability
runs. It is scored like the others (its stability from the consensus of each stability run,
whose subsamples all representations share). One seed of k-means is one draw among local optima
whose accuracy differs by up to 0.06 on these features, and a consensus of one partition per
representation inherits that draw; the ensemble averages over it.

Each representation counts in the consensus by its neighbour consistency relative to the highest,
to a power (``consensus_weights="consistency"``; 0 for a consistency <= 0): the mean, over its
full fits, of the chance-adjusted share of the common space's exact ``n_neighbors``-NN pairs that
the fit keeps in one cluster. Among the representations of one set it ranks them by accuracy better
than the separation does: the rank correlation between a representation's consistency and its
accuracy, averaged over 25 labelled sets x 3 seeds, is 0.87 (separation 0.79, stability 0.03), and
on the same sets at 8:1 class imbalance 0.90 (separation 0.69). A silhouette favours round clusters
of similar sizes around their centroids, which classes of different sizes are not: on Fashion-MNIST
at 8:1, block 2 of an ImageNet network (ACC 0.48) had the highest weight by separation and
stability and the best layers (0.65-0.66) about half of it; their consistency weights are 1 and
0.82, block 2's 0.23. The consistency also hears a representation that stands alone: raw pixels of
the small digits upsampled to 56-64 px (ACC 0.79, every layer 0.76 or less) have the highest
consistency (0.85-0.86), where their separation was below the deep layers' (and the previous
default needed a stability factor to hear them).

The power sets how far the consensus spreads: at 8 it mixes several good layers (on the digits
the mix beats every single layer by 0.06-0.10), at 16 it rests on the few most consistent ones
(which holds more sets near the best layer when classes differ in size, and gives the digit gains
back). Which is right depends on the data, so both consensuses are made and the one whose
partition keeps more common-space neighbours together is kept (``CONSISTENCY_POWERS``; the power
8 on a tie): the same neighbour consistency, applied to the result. Either power leaves low-level
layers almost no say (block 0: consistency 0.26-0.45 against 0.8-0.9, weight below 0.01).
Measured (``benchmarks/label_free_choice.py``, k-means, three selection seeds, raw pixels + 8
taps of EfficientNet-Lite0, -Lite1 or -Lite2), within 0.02 of the best single layer on the mean
of the seeds: 30 of 31 sets (88 of 93 single seeds, mean gap +0.027, worst single seed -0.070)
and at 8:1 24 of 31 (65 of 93, mean gap -0.008, worst -0.082); the power 8 alone (the default
before) 29 of 31 (86 of 93, +0.026) and 20 of 31 (55 of 93, -0.013); ``"separation_stability"``
(the square of the relative separation times the sixth power of the relative stability over the
ensemble) 29 of 31 (77 of 93, +0.003, -0.072) and 12 of 31 (-0.029, -0.129). The powers and the
rule were chosen on the first 25 sets; on the last six, not used for the rule, 6 of 6 and 5 of 6
at 8:1. The miss: a Fashion sample at 96 px (-0.021: one seed's best layer drew a k-means optimum
0.06 above its other seeds'). A consensus's consistency does not rank every power by accuracy:
with the power 32 among the candidates, its consensus (close to the single most consistent
layer, whose consistency it inherits) was kept where the mix was better; between 8 and 16 it
chose well. ``"separation"`` (the square of the relative separation) and ``"equal"`` are the
consensuses before. The single layer the steps above pick (``consensus=False``) was within 0.02
on 8 of 31 (among the deep layers the stability differences are within their noise).

The consensus k-means keeps the best of 50 restarts (``consensus_labels(n_init=50)``): its
objective has nearby optima whose accuracy differs by up to 0.06, and with 10 restarts the one
kept changed with the seed.

``consensus_keep < 1`` leaves out of the consensus the representations whose partitions agree
least with the others' (mean NMI of their fit to the others' fits): ``max(3, ceil(consensus_keep
* R))`` of R enter, and the others' extra fits are not made. With equal weights and 0.75 (7 of 9)
the first 18 sets gave 18 of 18 (mean gap +0.015), but its gain was of the size of the
consensus' own noise between nearby ensembles (8 of 9 was below both 9 and 7 of 9), so it is
an option, not the default.

Classes of very different sizes remain the weak spot: on the same sets subsampled to 8:1 (class
sizes falling geometrically), the k-means consensus is within 0.02 of the best layer on 24 of
31 (mean gap -0.008; the misses are four small digit sets, -0.030 to -0.071, and three Fashion
samples). k-means at the true k splits the largest classes and merges the smallest; the
consensus k-means adds its own pull towards equal sizes. Consensuses by average linkage or
spectral clustering of the co-association matrix did not close the gap (benchmarks/RESULTS.md).
A consensus without that pull gains at 8:1 and loses with classes of similar sizes: the vote
(``consensus_labels(vote=True)``: each partition's clusters matched one to one with the
consensus' on the points they share, each point to the cluster with the largest summed weight,
until none moves). k-means' own cluster sizes do not tell the two cases apart (they are about as
equal at 8:1 as with balanced classes), nor do neighbour consistency or agreement with the
ensemble. The score that compares candidates across k does, in part: with ``class_sizes="auto"``
(the default) both consensuses are made, each with its own power and stability, and the one with
the higher separation x stability is kept. It keeps the vote on 57% of the runs with classes as
they come, 29% at 4:1, 60-63% at 8:1 and 83% at 16:1. Measured (``benchmarks/label_free_choice.py``,
parts layer, imbalance and draws, with kernel-independent k-means seeding; sets within 0.02 of
the best layer as means of the seeds, ``"auto"`` / the k-means consensus (``"similar"``) / the
vote (``"unequal"``)):

* classes as they come, 31 sets: 26, 30, 25; mean gaps +0.005, +0.028, -0.002;
* 8:1, 31 sets: 23, 23, 23; another draw of 8:1, 12 sets: 8, 7, 10;
* 4:1, 12 sets: 9, 9, 9; 16:1, 12 sets: 12, 7, 12.

So ``"auto"`` gains at strong imbalance and pays with balanced classes (0.023 below the k-means
consensus on average); say ``class_sizes="similar"`` when you know the classes are of similar
sizes, and ``"unequal"`` when you know they are not (it also keeps k-means over SCAN).

Last, the method on that representation and k. When both k-means and the SCAN head are
candidates, SCAN is chosen, unless k-means' own stability there is below ``weak_stability``
(0.6): then k-means is. Otherwise (other methods, or a callable keeping more neighbours
together than either) the partition with the highest neighbour consistency wins. The rule
comes from measurement, not from a score (``benchmarks/label_free_choice.py``, figures in
benchmarks/RESULTS.md): no internal score measured (neighbour consistency, silhouette,
cross-fitted stability) ranked the two methods by accuracy. On 18 sets with classes of similar
sizes this rule was within 0.02 of the better method on 17 (the highest consistency on 9); where
k-means' stability is below 0.6 (weak structure: man-page NAME lines, ACC 0.31-0.47) the head's
entropy term invents k balanced groups and k-means is better. The cost is on strongly
imbalanced classes (subsampled to 8:1): there k-means was better by more than 0.02 on 9 of 14
and this rule picked it on 1 (6 of 14 within 0.02; the highest consistency 12), so with
classes of very different sizes pass ``class_sizes="unequal"``, which keeps k-means (11 of 14),
or leave SCAN out of the methods (``"auto"`` keeps this rule: the method part has one
representation, so no consensus to score). Stability does not otherwise
choose the method: a trained head varies more between subsamples than k-means through its
training alone, and the silhouette favours k-means' centroid-shaped clusters by construction.

Labels, when a caller has them, only ever score the candidates afterwards (the tests check that the choice is close
to the best candidate by accuracy); they never enter the choice.

A method is ``"kmeans"`` (the native k-means on L2-normalised rows, the pipeline's default
geometry), ``"scan"`` / ``"temi"`` (:class:`embedcluster.ClusterHead`) or a callable
``method(Z, k, seed) -> labels``: the hook for methods that live elsewhere (e.g. a UMAP + k-means
step), given as ``{"name": callable}``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from .._progress import Progress

logger = logging.getLogger("embedcluster")

MethodSpec = Union[str, Callable[[np.ndarray, int, int], Any]]

#: Methods known by name.
METHOD_NAMES = ("kmeans", "scan", "temi")
#: The name of the consensus candidate's representation (module notes).
CONSENSUS = "consensus"


@dataclass
class Selection:
    """What :func:`select_clustering` returns.

    Attributes
    ----------
    rows : one dict per candidate (representation, k, method; the representation
        ``"consensus"`` for the consensus candidates) with ``stability``,
        ``separation``, ``consistency``, ``score``, ``eligible`` (separation above the floor), ``seconds`` and
        ``chosen`` (the consensus rows also ``left_out``: the representations not in it, see
        ``consensus_keep``, ``weights``: representation -> its weight in it, see
        ``consensus_weights``, ``ensemble_stability``: representation -> the stability of its
        partitions in it, ``ensemble_consistency``: representation -> the mean neighbour
        consistency of its full fits in it, ``weighting``: the ``consensus_weights`` used,
        ``class_sizes``: the ``class_sizes`` given, and under ``"consistency"``,
        ``consistency_power``: the power kept and ``power_consistency``: power -> the neighbour
        consistency of the consensus made with it);
        the choice first, then by k and by stability.
    choice : the chosen row.
    labels : the chosen candidate's clusters of all points, (n,) int64.
    all_labels : every candidate's clusters of all points, by ``(representation, k, method)``.
    reason : one sentence: why the choice won.
    consensus_kinds : for each consensus candidate (keyed like ``all_labels``), the clusters of
        each kind of consensus made for it: ``"similar"`` (the k-means consensus) and / or
        ``"unequal"`` (relabelled by the partitions' vote); both under ``class_sizes="auto"``,
        whose row keeps the one chosen (``consensus_kind``) and both kinds' scores (``kinds``).
    """

    rows: List[Dict[str, Any]]
    choice: Dict[str, Any]
    labels: np.ndarray
    all_labels: Dict[tuple, np.ndarray] = field(repr=False)
    consensus_kinds: Dict[tuple, Dict[str, np.ndarray]] = field(default_factory=dict, repr=False)
    reason: str = ""

    def table(self) -> str:
        """The candidates as a text table, best first, the choice marked with ``*``."""
        head = (f"  {'representation':32s} {'k':>4s} {'method':10s} {'stability':>9s} {'separation':>10s} "
                f"{'consistency':>11s} {'score':>7s}")
        lines = [head]
        for r in self.rows:
            mark = "*" if r["chosen"] else " "
            note = "" if r["eligible"] else "  (separation below the floor)"
            lines.append(f"{mark} {r['representation'][:32]:32s} {r['k']:4d} {r['method'][:10]:10s} "
                         f"{r['stability']:9.3f} {r['separation']:10.3f} {r['consistency']:11.3f} "
                         f"{r['score']:7.3f}{note}")
        return "\n".join(lines)


def common_space_distances(representations: Mapping[str, Any], rows: np.ndarray) -> np.ndarray:
    """Euclidean distances between ``rows`` of the points in the common space (module notes):
    each representation L2-normalised per row, weighted by ``1/sqrt(m)``, concatenated. The
    squared distance is the mean over representations of ``2 - 2 cos``; float64, (s, s)."""
    d2 = np.zeros((len(rows), len(rows)))
    for Z in representations.values():
        Zs = _unit_rows(np.asarray(Z)[rows]).astype(np.float64)
        d2 += 2.0 - 2.0 * (Zs @ Zs.T)
    d2 /= len(representations)
    np.fill_diagonal(d2, 0.0)
    return np.sqrt(np.maximum(d2, 0.0))


def common_space_neighbours(representations: Mapping[str, Any], rows: np.ndarray, n_neighbors: int = 10,
                            chunk: int = 4096) -> np.ndarray:
    """The exact ``n_neighbors`` nearest points (among all n, self excluded) of each of ``rows``
    in the common space (module notes), i.e. by the mean over representations of the cosine
    similarity; (len(rows), n_neighbors) int64, nearest first (ties: the lower index). The
    native engine's exact inner-product search on the concatenated unit rows, each part scaled
    by 1/sqrt(R), whose inner products are those means; ``chunk`` queries per call."""
    from ..cluster import NearestNeighbors

    units = [_unit_rows(np.asarray(Z)) for Z in representations.values()]
    n = len(units[0])
    if not 1 <= n_neighbors < n:
        raise ValueError(f"n_neighbors={n_neighbors} should be from 1 to n - 1 = {n - 1}")
    rows = np.asarray(rows, np.int64)
    space = np.ascontiguousarray(np.concatenate(units, axis=1) / np.float32(np.sqrt(len(units))), np.float32)
    nn = NearestNeighbors(n_neighbors=n_neighbors + 1, metric="inner_product").fit(space)
    out = np.empty((len(rows), n_neighbors), np.int64)
    for start in range(0, len(rows), max(1, int(chunk))):
        part = rows[start:start + chunk]
        idx = np.asarray(nn.kneighbors(space[part], return_distance=False), np.int64)
        keep = idx != part[:, None]  # drop the point itself (or, where a duplicate outranks it, the last)
        keep[keep.all(axis=1), -1] = False
        out[start:start + len(part)] = idx[keep].reshape(len(part), n_neighbors)
    return out


def neighbour_consistency(labels: np.ndarray, rows: np.ndarray, neighbours: np.ndarray) -> float:
    """Chance-adjusted share of the neighbour pairs ``(rows[i], neighbours[i, j])`` whose two
    points share a cluster: ``(observed - expected) / (1 - expected)`` with ``expected = sum_c
    p_c**2`` the share for a random pair under the cluster sizes ``p_c``. 1 when no neighbour
    pair is cut, 0 for a partition unrelated to the graph; the adjustment keeps one giant
    cluster from scoring well. Unlike a silhouette it does not favour round clusters around
    centroids: a partition that follows a curved manifold keeps its neighbours together."""
    labels = np.asarray(labels, np.int64)
    observed = float(np.mean(labels[rows][:, None] == labels[neighbours]))
    sizes = np.bincount(labels) / len(labels)
    expected = float(sizes @ sizes)
    return (observed - expected) / (1.0 - expected) if expected < 1.0 else 0.0


def _unit_rows(Z: np.ndarray) -> np.ndarray:
    Z = np.asarray(Z, np.float32).reshape(len(Z), -1)
    norms = np.linalg.norm(Z, axis=1, keepdims=True)
    return np.ascontiguousarray(Z / np.where(norms > 0, norms, 1.0), np.float32)


def _fit_labels(method: MethodSpec, Z: np.ndarray, k: int, seed: int, n_init: int) -> np.ndarray:
    """One clustering of the (unit) rows ``Z`` into ``k`` clusters (silent: select_clustering
    reports progress by candidate)."""
    if callable(method):
        labels = np.asarray(method(Z, k, seed)).astype(np.int64).ravel()
        if labels.shape != (len(Z),):
            raise ValueError(f"a method callable returned {labels.shape[0]} labels for {len(Z)} points")
        return labels
    if method == "kmeans":
        from ..cluster import KMeans

        return np.asarray(KMeans(k, n_init=n_init, random_state=seed, verbose=0).fit(Z).labels_, np.int64)
    from .heads import ClusterHead

    return np.asarray(ClusterHead(k, method, random_state=seed, n_neighbors=min(20, len(Z) - 1), verbose=0
                                  ).fit(Z).labels_, np.int64)


def _stability(method: MethodSpec, Z: np.ndarray, k: int, n_runs: int, subsample: float,
               seed: int) -> Tuple[float, List[np.ndarray]]:
    """Mean pairwise adjusted Rand index of ``n_runs`` fits on seeded random subsamples, each
    pair compared on the points both runs saw; and the runs' labels (-1 outside the run's
    subsample). The subsamples depend on ``seed`` and n only, so every representation and
    method is run on the same ones."""
    rng = np.random.default_rng(seed)
    n = len(Z)
    m = max(k + 1, int(round(subsample * n)))
    runs = []
    for r in range(n_runs):
        idx = np.sort(rng.choice(n, size=min(m, n), replace=False))
        lab = np.full(n, -1, np.int64)
        lab[idx] = _fit_labels(method, Z[idx], k, seed + 1 + r, n_init=3)
        runs.append(lab)
    return _mean_pairwise_ari(runs), runs


def _mean_pairwise_ari(runs: List[np.ndarray]) -> float:
    from ..metrics import ari

    scores = []
    for i in range(len(runs)):
        for j in range(i + 1, len(runs)):
            both = (runs[i] >= 0) & (runs[j] >= 0)
            scores.append(ari(runs[i][both], runs[j][both]))
    return float(np.mean(scores))


def _consensus_ensemble_size(n: int, n_reps: int, k: int, wanted: int) -> int:
    """How many partitions per representation the consensus can hold within the memory budget
    (its memberships take up to ``4 n k`` bytes per partition), at most ``wanted``. Checked
    before any fit, so that a selection too large for memory stops at once rather than after
    its candidates: fewer than ``wanted`` logs a warning; not even one raises MemoryError."""
    from .._backend import check_python_memory, memory_budget

    one = 4.0 * n * n_reps * k
    fits = int(min(wanted, memory_budget(None) // one)) if one > 0 else wanted
    if fits < 1:
        check_python_memory(one, None, f"the consensus of {n_reps} representations' partitions (consensus=False "
                                       "chooses one representation instead)")
    if fits < wanted:
        logger.warning("the consensus holds %d partitions per representation, not %d: the memory budget allows "
                       "no more (n=%d, %d representations, k up to %d)", fits, wanted, n, n_reps, k)
    return max(fits, 1)


def _most_agreeing(partitions: Mapping[str, np.ndarray], keep: float) -> List[str]:
    """The names of the ``max(3, ceil(keep * R))`` of R partitions (of the same points) with the
    highest mean NMI to the others, in their given order (module notes)."""
    import math

    from ..metrics import nmi

    names = list(partitions)
    n_keep = min(len(names), max(3, math.ceil(keep * len(names) - 1e-9)))  # 2/3 * 9 is 6.000...1 in floats
    if n_keep == len(names):
        return names
    pair = np.zeros((len(names), len(names)))
    for i in range(len(names)):  # NMI is symmetric: each pair once
        for j in range(i + 1, len(names)):
            pair[i, j] = pair[j, i] = nmi(partitions[names[i]], partitions[names[j]])
    agreement = dict(zip(names, pair.sum(1) / (len(names) - 1)))
    top = set(sorted(names, key=lambda a: -agreement[a])[:n_keep])
    return [a for a in names if a in top]


#: Powers of the relative separation and of the relative stability in a representation's weight
#: in the consensus (module notes; chosen by measurement, benchmarks/RESULTS.md).
SEPARATION_POWER, STABILITY_POWER = 2, 6
#: The powers of the relative neighbour consistency that ``consensus_weights="consistency"``
#: tries; the consensus that keeps more common-space neighbours together is kept (module notes).
CONSISTENCY_POWERS = (8, 16)
CONSENSUS_WEIGHTS = ("consistency", "separation_stability", "separation", "equal")
#: ``select_clustering``'s ``class_sizes``: what a user expects of the classes' sizes.
CLASS_SIZES = ("auto", "similar", "unequal")


def _consensus_weights(separation: Mapping[str, float], stability: Mapping[str, float],
                       consistency: Mapping[str, float], how: str,
                       power: int = CONSISTENCY_POWERS[0]) -> Dict[str, float]:
    """Each representation's weight in the consensus (module notes): ``"consistency"``: its
    neighbour consistency relative to the highest, to the power ``power`` (0 for a
    consistency <= 0; all 1 when none is above 0); ``"separation"``: the square of its separation
    relative to the highest (0 for a separation <= 0; all 1 when none is above 0);
    ``"separation_stability"``: that times the sixth power of its stability (over its ensemble)
    relative to the highest among the representations whose separation is above 0; ``"equal"``:
    all 1. ``stability`` is read only for the representations with a separation above 0 under
    ``"separation_stability"``, ``consistency`` (keyed like ``separation``) only under
    ``"consistency"``."""
    if how == "consistency":
        top = max(consistency.values())
        if top <= 0:
            return {rep: 1.0 for rep in consistency}
        return {rep: (max(c, 0.0) / top) ** power for rep, c in consistency.items()}
    top = max(separation.values())
    if how == "equal" or top <= 0:
        return {rep: 1.0 for rep in separation}
    weight = {rep: (max(sep, 0.0) / top) ** SEPARATION_POWER for rep, sep in separation.items()}
    if how == "separation_stability":
        heard = [rep for rep in separation if weight[rep] > 0]
        top_stability = max(max(stability[rep], 0.0) for rep in heard)
        for rep in heard:
            weight[rep] *= (max(stability[rep], 0.0) / top_stability) ** STABILITY_POWER if top_stability > 0 else 1.0
    return weight


def consensus_labels(partitions: Sequence[Any], k: int, seed: int = 0,
                     weights: Optional[Sequence[float]] = None, n_init: int = 50, vote: bool = False) -> np.ndarray:
    """One partition that agrees with several partitions of the same n points: k-means (``n_init``
    restarts, the lowest objective kept) on the stacked one-hot cluster memberships, i.e. points
    that most partitions put together end up together (evidence accumulation, linear in n). The
    objective has several nearby optima whose accuracy differs by up to 0.06 on the benchmark's
    sets; with 10 restarts the one kept changed with the seed, with 50 it rarely does. A label of -1
    (a point a partition did not see, or noise) adds nothing for that partition; points with -1 in
    every partition get -1. ``weights`` (one number >= 0 per partition, default all 1): a partition
    counts in proportion to its weight (its membership columns are scaled by the weight's square
    root, so that it adds ``weight`` times its disagreement to the k-means objective); a partition
    of weight 0 is left out. ``vote``: then relabel the points by the partitions' weighted vote
    (:func:`_vote`), which drops the k-means objective's pull towards clusters of equal size (for
    classes of very different sizes; module notes). Returns (n,) int64 labels in 0..k-1 (and -1)."""
    plain, voted = _consensus(partitions, k, seed, weights, n_init, vote)
    return voted if voted is not None else plain


def _consensus(partitions: Sequence[Any], k: int, seed: int, weights: Optional[Sequence[float]], n_init: int,
               vote: bool) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """:func:`consensus_labels`' work: the k-means consensus and, with ``vote``, its relabelling by
    the vote (which starts from it), so that a caller wanting both makes the k-means consensus once."""
    from .._backend import check_python_memory
    from ..cluster import KMeans

    if isinstance(n_init, bool) or not isinstance(n_init, (int, np.integer)) or n_init < 1:
        raise ValueError(f"n_init={n_init!r} should be an integer >= 1 (k-means restarts of the consensus)")
    parts = [np.asarray(p, np.int64).ravel() for p in partitions]
    if not parts or len({len(p) for p in parts}) != 1:
        raise ValueError("consensus_labels needs one or more partitions of the same points")
    w = np.ones(len(parts)) if weights is None else np.asarray(weights, np.float64).ravel()
    if w.shape != (len(parts),) or not np.all(np.isfinite(w)) or np.any(w < 0) or not np.any(w > 0):
        raise ValueError(f"consensus_labels needs one finite weight >= 0 per partition ({len(parts)}), not all "
                         f"0; got {w.size} weights, from {np.min(w) if w.size else None} to "
                         f"{np.max(w) if w.size else None}")
    parts, scale = [p for p, wi in zip(parts, w) if wi > 0], [np.float32(np.sqrt(wi)) for wi in w if wi > 0]
    seen = np.logical_or.reduce([p >= 0 for p in parts])
    rows = np.flatnonzero(seen)
    out = np.full(len(parts[0]), -1, np.int64)
    if len(rows) <= k:
        out[rows] = np.arange(len(rows))
        return out, (out.copy() if vote else None)
    # Each partition's clusters become columns; the memberships are written straight into one
    # (seen rows x all clusters) matrix, the only copy.
    codes = [np.unique(p[rows], return_inverse=True) for p in parts]
    width = sum(int((ids >= 0).sum()) for ids, _ in codes)
    check_python_memory(4.0 * len(rows) * width, None, f"the consensus of {len(parts)} partitions")
    H = np.zeros((len(rows), width), np.float32)
    start = 0
    for (ids, inv), factor in zip(codes, scale):
        skip = int((ids < 0).sum())  # a -1 sorts first: its rows get no column
        member = inv >= skip
        H[np.flatnonzero(member), start + inv[member] - skip] = factor
        start += len(ids) - skip
    out[rows] = np.asarray(KMeans(k, n_init=n_init, random_state=seed, verbose=0).fit(H).labels_, np.int64)
    if not vote:
        return out, None
    del H
    voted = out.copy()
    voted[rows] = _vote(codes, [float(wi) for wi in w if wi > 0], out[rows], k)
    return out, voted


#: Most rounds of :func:`_vote` (on the benchmark's ensembles it settled within 10).
VOTE_ROUNDS = 20


def _vote(codes: Sequence[Tuple[np.ndarray, np.ndarray]], weights: Sequence[float], start: np.ndarray,
          k: int) -> np.ndarray:
    """Relabels the points by a weighted vote of partitions of them, given as ``np.unique(labels,
    return_inverse=True)`` pairs (a label -1: not seen), starting from the partition ``start``
    (labels in 0..k-1): each round, every partition's clusters are matched one to one with the
    current clusters (Hungarian matching on the points they share; a cluster left over when it
    has more than k goes to the cluster it overlaps most), each point takes the current cluster
    with the largest sum of the weights of the partitions that put it there, and the rounds stop
    when no point changes (at most ``VOTE_ROUNDS``). Unlike the k-means consensus this adds no
    pull towards clusters of equal size: a point goes where the weighted majority of the
    partitions puts it, however large or small that cluster is. It holds an (n, k) float64 table
    of votes."""
    from scipy.optimize import linear_sum_assignment

    current = np.asarray(start, np.int64).copy()
    n = len(current)
    # Each partition's seen points and their clusters (numbered from 0), once for all rounds.
    members = []
    for ids, inv in codes:
        skip = int((ids < 0).sum())  # a -1 sorts first
        seen = np.flatnonzero(inv >= skip)
        members.append((seen, inv[seen] - skip, len(ids) - skip))
    for _ in range(VOTE_ROUNDS):
        votes = np.zeros((n, k))
        for (seen, own, width), w in zip(members, weights):
            overlap = np.bincount(own * k + current[seen], minlength=width * k).reshape(width, k)
            to = overlap.argmax(1)
            matched_rows, matched_cols = linear_sum_assignment(-overlap)
            to[matched_rows] = matched_cols
            votes[seen, to[own]] += w  # each point once per partition: no repeated index
        new = votes.argmax(1)
        if np.array_equal(new, current):
            break
        current = new
    return current


def _kinds(made: Tuple[np.ndarray, Optional[np.ndarray]]) -> Dict[str, np.ndarray]:
    """:func:`_consensus`' result by ``class_sizes`` kind: ``"similar"`` the k-means consensus,
    ``"unequal"`` its vote (when made)."""
    plain, voted = made
    return {"similar": plain, **({"unequal": voted} if voted is not None else {})}


class GivenClusters:
    """A clusterer whose clusters are already known (e.g. a :func:`consensus_labels` result): a
    :class:`embedcluster.pipeline.TransferClustering` given it keeps ``labels`` as its clusters
    and trains its probe on them. ``fit(Z)`` accepts exactly ``len(labels)`` points (the same
    points, in the same order)."""

    def __init__(self, labels: Any):
        self.labels = np.asarray(labels, np.int64).ravel()
        self.n_clusters = int(len(np.unique(self.labels[self.labels >= 0])))

    def fit(self, Z: Any, y: Any = None) -> GivenClusters:
        if len(Z) != len(self.labels):
            raise ValueError(f"GivenClusters holds clusters of {len(self.labels)} points; fit got {len(Z)}: "
                             "it only labels the points its clusters were found on")
        self.labels_ = self.labels.copy()
        return self


def _check_inputs(representations: Mapping[str, Any], ks: List[int], methods: Dict[str, MethodSpec],
                  n_runs: int, subsample: float, separation_floor: float, weak_stability: float) -> int:
    """Validates the arguments of :func:`select_clustering`; returns the number of points."""
    if not isinstance(representations, Mapping) or not representations:
        raise ValueError("representations should be a non-empty dict of name -> (n, d) array")
    sizes = {name: len(Z) for name, Z in representations.items()}
    if len(set(sizes.values())) != 1:
        raise ValueError(f"every representation must describe the same points; row counts: {sizes}")
    n = next(iter(sizes.values()))
    for name, Z in representations.items():
        arr = np.asarray(Z)
        if arr.ndim < 2 or arr.shape[0] == 0 or not np.issubdtype(arr.dtype, np.number) \
                or not np.isfinite(arr).all():
            raise ValueError(f"representation {name!r} should be a finite numeric (n, d) array with n >= 1, "
                             f"got shape {arr.shape} and dtype {arr.dtype}")
    if not ks or not all(isinstance(k, (int, np.integer)) and not isinstance(k, bool) and 2 <= k < n
                         for k in ks):
        raise ValueError(f"n_clusters={ks} should be integers from 2 to n - 1 = {n - 1}")
    for name, method in methods.items():
        if not callable(method) and method not in METHOD_NAMES:
            raise ValueError(f"method {name!r}: {method!r} should be one of {METHOD_NAMES} or a callable "
                             "(Z, k, seed) -> labels")
    if not isinstance(n_runs, int) or n_runs < 2:
        raise ValueError(f"n_runs={n_runs!r} should be an integer >= 2 (stability compares runs)")
    if not (isinstance(subsample, float) and 0.0 < subsample <= 1.0):
        raise ValueError(f"subsample={subsample!r} should be a float in (0, 1]")
    if not (isinstance(separation_floor, (int, float)) and 0.0 <= separation_floor <= 1.0):
        raise ValueError(f"separation_floor={separation_floor!r} should be a number in [0, 1]")
    if isinstance(weak_stability, bool) or not (isinstance(weak_stability, (int, float))
                                                and 0.0 <= weak_stability <= 1.0):
        raise ValueError(f"weak_stability={weak_stability!r} should be a number in [0, 1]")
    return n


def _as_methods(methods: Union[Sequence[MethodSpec], Mapping[str, MethodSpec]]) -> Dict[str, MethodSpec]:
    if isinstance(methods, Mapping):
        return dict(methods)
    if isinstance(methods, str) or callable(methods):
        methods = [methods]
    return {(m if isinstance(m, str) else getattr(m, "__name__", "custom")): m for m in methods}


def _choose(rows: List[Dict[str, Any]], ks: List[int], floor: float, specs: Mapping[str, MethodSpec],
            weak_stability: float, prefer_kmeans: bool = False) -> Any:
    """The choice of the module notes; marks ``eligible`` and ``chosen`` on the rows, orders them
    (the choice first, then by k and stability) and returns (choice, reason). ``specs`` maps
    each method's name to what it is (to find k-means and SCAN under any name); ``prefer_kmeans``
    (``class_sizes="unequal"``) keeps k-means over SCAN."""
    winners = []
    singles = [r for r in rows if r["representation"] != CONSENSUS]
    for r in rows:
        r["eligible"] = r["representation"] == CONSENSUS
    for k in ks:
        at_k = [r for r in singles if r["k"] == k]
        top = max(r["separation"] for r in at_k)
        for r in at_k:
            r["eligible"] = top > 0 and r["separation"] >= floor * top
        pool = [r for r in at_k if r["eligible"]] or at_k
        winners.append(max(pool, key=lambda r: (r["stability"], r["separation"])))
    first = max(winners, key=lambda r: (r["score"], r["stability"]))
    pooled = [r for r in rows if r["representation"] == CONSENSUS and r["k"] == first["k"]]
    same = pooled or [r for r in rows if r["representation"] == first["representation"] and r["k"] == first["k"]]
    best = max(same, key=lambda r: (r["consistency"], r["stability"]))
    method_why = (f"{best['method']} keeps the most common-space neighbours together there (consistency "
                  f"{best['consistency']:.3f})")
    kmeans = next((r for r in same if specs[r["method"]] == "kmeans"), None)
    scan = next((r for r in same if specs[r["method"]] == "scan"), None)
    if kmeans is not None and scan is not None and best in (kmeans, scan):
        if prefer_kmeans:
            best = kmeans
            method_why = (f"{kmeans['method']} is kept over {scan['method']} for classes of unequal sizes "
                          "(class_sizes='unequal'): SCAN's entropy term pulls towards equal ones")
        elif kmeans["stability"] >= weak_stability:
            best = scan
            method_why = (f"{scan['method']} is preferred over {kmeans['method']} where k-means' stability there "
                          f"({kmeans['stability']:.3f}) is at least {weak_stability:g}")
        else:
            best = kmeans
            method_why = (f"{kmeans['method']} is kept over {scan['method']}: its stability there "
                          f"({kmeans['stability']:.3f}) is below {weak_stability:g}, structure too weak for the "
                          "head's k balanced groups")
    best["chosen"] = True
    top = max(r["separation"] for r in singles if r["k"] == best["k"])
    reason = (f"{best['representation']}, k={best['k']}: with {first['method']}, the most stable "
              f"({first['stability']:.3f}) of the candidates at k={best['k']} whose separation is at least "
              f"{floor:g} of the best ({first['separation']:.3f} vs {top:.3f})")
    if pooled:
        n_reps = len({r["representation"] for r in singles})
        left_out = best.get("left_out") or []
        whose = (f"{CONSENSUS} of the {n_reps} representations' partitions" if not left_out else
                 f"{CONSENSUS} of the {n_reps - len(left_out)} of {n_reps} representations whose partitions agree most "
                 f"with the others' (left out: {', '.join(left_out)})")
        weights = best.get("weights") or {}
        if any(w != 1.0 for w in weights.values()):
            unheard = [rep for rep, w in weights.items() if w <= 0]
            how = {"consistency": f"its relative neighbour consistency to the power {best.get('consistency_power')}",
                   "separation_stability": f"the square of its relative separation times its relative stability "
                                           f"to the power {STABILITY_POWER}",
                   "separation": "the square of its relative separation"}[best["weighting"]]
            tried = best.get("power_consistency") or {}
            if len(tried) > 1:
                others = ", ".join(f"{c:.3f} at {p}" for p, c in tried.items() if p != best["consistency_power"])
                how += (f" (of the powers {' and '.join(map(str, tried))}, the one whose consensus keeps the most "
                        f"common-space neighbours together: {best['consistency']:.3f} vs {others})")
            whose += f", each counted by {how}" + (f" ({', '.join(unheard)}: 0)" if unheard else "")
        kinds = best.get("kinds") or {}
        if kinds:
            def score(c: str) -> float:
                return max(kinds[c]["separation"], 0.0) * kinds[c]["stability"]
            voted = best["consensus_kind"] == "unequal"
            whose += (", " + ("relabelled by their vote (no pull towards clusters of equal size)" if voted
                              else "by k-means on their memberships")
                      + f" (class_sizes='auto': its separation x stability, {score(best['consensus_kind']):.3f}, is at "
                      f"least that of the consensus " + ("by k-means, " if voted else "relabelled by the vote, ")
                      + f"{score('similar' if voted else 'unequal'):.3f})")
        elif best.get("class_sizes") == "unequal":
            whose += ", relabelled by their vote (class_sizes='unequal': no pull towards clusters of equal size)"
        reason = (f"{whose}, "
                  f"k={best['k']} (among single representations the choice is within noise; the most stable whose "
                  f"separation is at least {floor:g} of the best was {first['representation']} with "
                  f"{first['method']}, stability {first['stability']:.3f})")
    if len(ks) > 1:
        others = ", ".join(f"k={w['k']} {w['score']:.3f}" for w in winners if w is not first)
        reason += (f"; k={best['k']} has the highest separation x stability, {first['score']:.3f} (the other "
                   f"values' winners: {others})")
    if len(same) > 1:
        reason += f"; {method_why}"
    if top <= 0:
        reason += " (no candidate separates the points in the common space: the choice is weak)"
    rows.sort(key=lambda r: (not r["chosen"], ks.index(r["k"]), -r["stability"], r["representation"], r["method"]))
    return best, reason


def select_clustering(representations: Mapping[str, Any], n_clusters: Union[int, Sequence[int]],
                      methods: Union[Sequence[MethodSpec], Mapping[str, MethodSpec]] = ("kmeans",), *,
                      n_runs: int = 4, subsample: float = 0.8, sample_size: int = 2000,
                      separation_floor: float = 0.8, n_neighbors: int = 10, weak_stability: float = 0.6,
                      consensus: bool = True, consensus_fits: int = 3, consensus_keep: float = 1.0,
                      consensus_weights: str = "consistency", class_sizes: str = "auto",
                      seed: int = 0) -> Selection:
    """Chooses a representation, k and a method without labels (module notes).

    Parameters
    ----------
    representations : name -> (n, d) array, every one describing the same n points (e.g.
        ``{"raw": pixels, "efficientnet-lite0 block6": ..., ...}``).
    n_clusters : k, or several values of k to choose among (when k is unknown).
    methods : names (``"kmeans"``, ``"scan"``, ``"temi"``), callables ``(Z, k, seed) ->
        labels`` (the hook for other methods), or a dict name -> either. Every method sees the
        rows L2-normalised.
    n_runs, subsample : stability runs per candidate and the fraction of points in each.
    sample_size : points whose common-space silhouette is computed (a seeded sample when n is
        larger; the distances between them are held in memory, ``8 * sample_size**2`` bytes).
    separation_floor : fraction of the best separation at a k that a candidate needs to be
        eligible (module notes).
    n_neighbors : neighbours per point of the common-space graph that scores neighbour
        consistency (module notes).
    weak_stability : k-means' stability below which SCAN is not preferred over k-means
        (module notes).
    consensus : with three or more representations, add for each k and method the consensus of
        the representations' partitions (:func:`consensus_labels`) as the candidate
        ``"consensus"``, and choose it over any one representation (module notes).
    consensus_fits : full-data fits per representation, k and method that enter the consensus
        (the candidate's own fit and ``consensus_fits - 1`` more, seeded ``seed + 100 t``),
        beside the ``n_runs`` stability runs; each extra fit costs as much as the candidate's. The
        consensus holds up to ``4 n R (consensus_fits + n_runs) k`` bytes of memberships for R
        representations; checked against the memory budget before any fit: when it does not fit,
        fewer partitions per representation enter (stability runs first, then extra fits, with a
        warning), and when not even one each fits, MemoryError at once.
    consensus_keep : fraction of the representations whose partitions enter the consensus: for
        each k and method, the ``max(3, ceil(consensus_keep * R))`` whose full fits agree most with
        the other representations' (mean NMI); the rest are left out of it, and their extra fits
        are not made (module notes). 1 (the default) keeps every representation.
    consensus_weights : ``"consistency"`` (the default): each representation's partitions count
        in the consensus in proportion to its neighbour consistency (the mean over its full fits)
        relative to the highest at that k and method, to the power 8 or 16, whichever gives the
        consensus that keeps more common-space neighbours together (0 for a consistency <= 0 of
        its first fit, and its extra fits are then not made); ``"separation_stability"`` (the
        default before): the square of its separation relative to the best times its stability
        relative to the most stable's to the power 6 (its stability over all its partitions in
        the consensus: its full fits and its stability runs; 0 for a separation <= 0, and no extra
        fits); ``"separation"``: the square of the relative separation only; ``"equal"``: every
        representation counts the same (module notes).
    class_sizes : how the consensus treats the classes' sizes. ``"auto"`` (the default): both
        the k-means consensus and its relabelling by the partitions' vote
        (``consensus_labels(vote=True)``) are made, each with its own power and stability, and the
        one with the higher separation x stability is kept (the k-means consensus on a tie);
        the method rule is the default one. ``"similar"``: the k-means consensus, which pulls
        towards clusters of equal size, and SCAN is preferred over k-means unless the structure is
        weak. ``"unequal"`` (you know the largest class is several times the smallest): the vote,
        and k-means is preferred over SCAN, whose entropy term also pulls towards equal sizes
        (module notes: measured with classes of similar sizes and at 4:1 to 16:1).
    seed : seeds the subsamples, the fits and the silhouette sample.

    Returns
    -------
    Selection
        every candidate's scores (best first), the choice, its labels and why it won.
    """
    from sklearn.metrics import silhouette_score

    ks = [int(n_clusters)] if isinstance(n_clusters, (int, np.integer)) else [int(k) for k in n_clusters]
    method_map = _as_methods(methods)
    n = _check_inputs(representations, ks, method_map, n_runs, subsample, separation_floor, weak_stability)
    if not isinstance(consensus_fits, (int, np.integer)) or isinstance(consensus_fits, bool) or consensus_fits < 1:
        raise ValueError(f"consensus_fits={consensus_fits!r} should be an integer >= 1")
    if isinstance(consensus_keep, bool) or not (isinstance(consensus_keep, (int, float))
                                                and 0.0 < consensus_keep <= 1.0):
        raise ValueError(f"consensus_keep={consensus_keep!r} should be a number in (0, 1]")
    if consensus_weights not in CONSENSUS_WEIGHTS:
        raise ValueError(f"consensus_weights={consensus_weights!r} should be one of {CONSENSUS_WEIGHTS}")
    if class_sizes not in CLASS_SIZES:
        raise ValueError(f"class_sizes={class_sizes!r} should be one of {CLASS_SIZES}")
    kinds = ("similar", "unequal") if class_sizes == "auto" else (class_sizes,)
    voting = "unequal" in kinds
    units = {name: _unit_rows(np.asarray(Z)) for name, Z in representations.items()}
    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(n, size=sample_size, replace=False)) if n > sample_size else np.arange(n)
    D = common_space_distances(units, sample)
    neighbours = common_space_neighbours(units, sample, min(n_neighbors, n - 1))
    with_consensus = consensus and len(units) >= 3
    if with_consensus and CONSENSUS in units:
        raise ValueError(f"a representation is named {CONSENSUS!r}, the name of the consensus candidate: rename it "
                         "or pass consensus=False")
    per_rep = _consensus_ensemble_size(n, len(units), max(ks), consensus_fits + n_runs) if with_consensus else 0
    rows: List[Dict[str, Any]] = []
    all_labels: Dict[tuple, np.ndarray] = {}
    consensus_kinds: Dict[tuple, Dict[str, np.ndarray]] = {}
    all_runs: Dict[tuple, List[np.ndarray]] = {}

    def scores(labels: np.ndarray) -> Tuple[float, float]:
        """(separation, consistency) of a partition of all points, in the common space."""
        sub = labels[sample]
        separation = float(silhouette_score(D, sub, metric="precomputed")) \
            if 2 <= len(np.unique(sub[sub >= 0])) and len(np.unique(sub)) < len(sub) else -1.0
        return separation, neighbour_consistency(labels, sample, neighbours)

    def add_row(rep: str, k: int, mname: str, labels: np.ndarray, stability: float, start: float) -> None:
        separation, consistency = scores(labels)
        rows.append({"representation": rep, "k": k, "method": mname, "stability": stability,
                     "separation": separation, "consistency": consistency,
                     "score": max(separation, 0.0) * stability,
                     "n_clusters_found": int(len(np.unique(labels[labels >= 0]))),
                     "seconds": time.perf_counter() - start, "chosen": False})
        all_labels[(rep, k, mname)] = labels

    # Progress as the caller shows it (the command line's run --select auto).
    shown = Progress("label-free selection", total=(len(units) + with_consensus) * len(ks) * len(method_map),
                     unit="candidate")
    for rep, Z in units.items():
        for k in ks:
            for mname, method in method_map.items():
                shown.begin(f"{rep}, k={k}, {mname}")
                start = time.perf_counter()
                labels = _fit_labels(method, Z, k, seed, n_init=10)
                stability, all_runs[(rep, k, mname)] = _stability(method, Z, k, n_runs, subsample, seed)
                add_row(rep, k, mname, labels, stability, start)
    if with_consensus:
        scored = {(r["representation"], r["k"], r["method"]): r for r in rows}
        # The candidate: the consensus of the kept representations' (all by default) full fits and
        # stability runs (an ensemble of partitions: module notes). Its stability: the consensus of
        # their stability runs run by run (the runs share their subsamples across representations:
        # _stability). The extra fits are made here, for the representations kept only.
        for k in ks:
            for mname, method in method_map.items():
                shown.begin(f"{CONSENSUS} of {len(units)}, k={k}, {mname}")
                start = time.perf_counter()
                kept = _most_agreeing({rep: all_labels[(rep, k, mname)] for rep in units}, consensus_keep)
                separation = {rep: scored[(rep, k, mname)]["separation"] for rep in kept}
                consistency = {rep: scored[(rep, k, mname)]["consistency"] for rep in kept}
                # Every weighting but "equal" gives a consistency (or separation) <= 0 no say
                # (unless none is above 0): those representations get no extra fits.
                first = consensus_weights if consensus_weights in ("consistency", "equal") else "separation"
                heard = _consensus_weights(separation, {}, consistency, first)
                ensembles = {rep: [all_labels[(rep, k, mname)],
                                   *[_fit_labels(method, units[rep], k, seed + 100 * t, n_init=10)
                                     for t in range(1, min(consensus_fits, per_rep))],
                                   *all_runs[(rep, k, mname)]][:per_rep] for rep in kept if heard[rep] > 0}
                # A representation's stability over its whole ensemble (its full fits and its
                # stability runs; the row's own when the memory budget leaves one partition).
                member_stability = {rep: _mean_pairwise_ari(parts) if len(parts) > 1
                                    else scored[(rep, k, mname)]["stability"] for rep, parts in ensembles.items()}
                # Its consistency: the mean over its full fits (the stability runs leave points out).
                full = min(consensus_fits, per_rep)
                member_consistency = {rep: float(np.mean([neighbour_consistency(part, sample, neighbours)
                                                          for part in parts[:full]]))
                                      for rep, parts in ensembles.items()}
                # "consistency" tries each power and keeps the consensus that keeps more
                # common-space neighbours together (the first power on a tie), for each kind of
                # consensus asked for (both under class_sizes="auto": the vote starts from the
                # k-means consensus, which is made once).
                powers = CONSISTENCY_POWERS if consensus_weights == "consistency" else CONSISTENCY_POWERS[:1]
                tried: Dict[str, Dict[int, Tuple[float, Dict[str, float], np.ndarray]]] = {kind: {} for kind in kinds}
                for power in powers:
                    w = _consensus_weights(separation, member_stability, {**consistency, **member_consistency},
                                           consensus_weights, power)
                    same = [p for p in tried[kinds[0]] if tried[kinds[0]][p][1] == w]  # all 1 when no consistency > 0
                    in_it = [rep for rep in ensembles if w[rep] > 0]
                    made = {} if same else _kinds(_consensus(
                        [part for rep in in_it for part in ensembles[rep]], k, seed,
                        [w[rep] for rep in in_it for _ in ensembles[rep]], 50, voting))
                    for kind in kinds:
                        tried[kind][power] = tried[kind][same[0]] if same else \
                            (neighbour_consistency(made[kind], sample, neighbours), w, made[kind])
                # Each kind: its power, its weights and its stability (the consensus of each
                # stability run with those weights); runs with the same weights are made once.
                made_runs: Dict[int, List[Dict[str, np.ndarray]]] = {}
                found: Dict[str, Dict[str, Any]] = {}
                for kind in kinds:
                    power = max(powers, key=lambda p: tried[kind][p][0])
                    _, weight, labels = tried[kind][power]
                    counted = [rep for rep in ensembles if weight[rep] > 0]
                    if power not in made_runs:
                        made_runs[power] = [_kinds(_consensus([all_runs[(rep, k, mname)][r] for rep in counted], k,
                                                              seed + 1 + r, [weight[rep] for rep in counted], 50,
                                                              voting)) for r in range(n_runs)]
                    runs = [run[kind] for run in made_runs[power]]
                    found[kind] = {"power": power, "weights": weight, "labels": labels,
                                   "stability": _mean_pairwise_ari(runs), **dict(zip(
                                       ("separation", "consistency"), scores(labels)))}
                # class_sizes="auto": the kind whose consensus scores the higher separation x
                # stability (the score that compares candidates across k), the k-means consensus on a tie.
                kind = max(kinds, key=lambda c: max(found[c]["separation"], 0.0) * found[c]["stability"])
                chosen = found[kind]
                add_row(CONSENSUS, k, mname, chosen["labels"], chosen["stability"], start)
                rows[-1]["left_out"] = [rep for rep in units if rep not in kept]
                rows[-1]["weights"] = chosen["weights"]
                rows[-1]["ensemble_stability"] = member_stability
                rows[-1]["ensemble_consistency"] = member_consistency
                rows[-1]["weighting"] = consensus_weights
                rows[-1]["class_sizes"] = class_sizes
                rows[-1]["consensus_kind"] = kind
                if len(kinds) > 1:
                    rows[-1]["kinds"] = {c: {key: found[c][key] for key in ("stability", "separation", "consistency")}
                                         for c in kinds}
                consensus_kinds[(CONSENSUS, k, mname)] = {c: found[c]["labels"] for c in kinds}
                if consensus_weights == "consistency":
                    rows[-1]["consistency_power"] = chosen["power"]
                    rows[-1]["power_consistency"] = {p: tried[kind][p][0] for p in powers}
    shown.update(1)
    shown.close()
    best, reason = _choose(rows, ks, separation_floor, method_map, weak_stability,
                           prefer_kmeans=class_sizes == "unequal")
    return Selection(rows=rows, choice=best, labels=all_labels[(best["representation"], best["k"], best["method"])],
                     all_labels=all_labels, reason=reason, consensus_kinds=consensus_kinds)


def encoder_taps(encoder: Any, data: Any, layers: Sequence[str], *, batch_size: int = 64,
                 progress: bool = False) -> Dict[str, np.ndarray]:
    """Each of ``layers`` of an embedcluster encoder model (EfficientNet-Lite, MLP / CNN
    encoders) as its own representation, from one forward pass: ``encoder`` is an
    :class:`embedcluster.encoders.Encoder` whose ``embedding_layer`` is ``layers`` (e.g.
    ``load_encoder("efficientnet-lite0", embedding_layer=[...])``). Its output concatenates the
    layers, each L2-normalised and scaled by ``1/sqrt(len(layers))``; the parts are split by the
    layers' widths and returned L2-normalised, keyed by layer name."""
    model = getattr(encoder, "model", None)
    inner: Any = getattr(model, "encoder", model)
    if not hasattr(inner, "layer_dim"):
        raise ValueError(f"encoder_taps needs an embedcluster encoder model with named layers, got "
                         f"{type(inner).__name__}")
    widths = [int(inner.layer_dim(name)) for name in layers]
    Z = np.asarray(encoder.encode(data, batch_size=batch_size, progress=progress), np.float32)
    if Z.shape[1] != sum(widths):
        raise ValueError(f"the encoder gave {Z.shape[1]} columns; layers {list(layers)} have {sum(widths)}: load "
                         f"it with embedding_layer={list(layers)}")
    bounds = np.cumsum([0, *widths])
    return {name: _unit_rows(Z[:, bounds[i]:bounds[i + 1]]) for i, name in enumerate(layers)}


def default_taps(encoder: Any) -> Optional[List[str]]:
    """The layers whose taps :func:`candidate_representations` offers for an encoder: for
    EfficientNet-Lite the last block of each stage and the pooled head (a stage ends where the
    next block changes width); for embedcluster's MLP / CNN encoders every named layer but the
    logits; None for any other model (its output is the one candidate)."""
    model = getattr(encoder, "model", None)
    inner = getattr(model, "encoder", model)
    config = getattr(inner, "config", None)
    names = getattr(inner, "layer_names", None)
    if not isinstance(config, dict) or not names:
        return None
    blocks = config.get("blocks")
    if config.get("arch") == "efficientnet-lite" and isinstance(blocks, list):
        ends = [f"block{i}" for i in range(len(blocks))
                if i == len(blocks) - 1 or blocks[i + 1]["out"] != blocks[i]["out"]]
        return ends + ["head"]
    return [name for name in names if name != "logits"]


def candidate_representations(data: Any, encoder: Union[None, str, Sequence[str]] = None, *, raw: bool = True,
                              encoder_options: Optional[Dict[str, Any]] = None, batch_size: int = 64,
                              progress: bool = False, device: Optional[str] = None) -> Dict[str, Any]:
    """The representations :func:`select_clustering` compares for a data set: the raw features
    (flattened pixels or vectors; not for texts) and, with ``encoder`` (a name or path for
    :func:`embedcluster.encoders.load_encoder`), each tap of :func:`default_taps` from one
    forward pass, or the encoder's output when it has no taps. ``encoder`` may also be a list of
    names or paths: every encoder's taps are candidates (named ``"<encoder> <layer>"``, or the
    encoder's name when it has no taps; :func:`encoder_of` tells which encoder a name came from),
    each encoder run with the same ``encoder_options``.

    Returns name -> ``(Z, options)``: ``options`` are the ``encoder_options`` of a
    :class:`~embedcluster.transfer.pipeline.TransferClustering` that embeds the same way (None
    for the raw features), so that the chosen candidate becomes a pipeline. ``device``: where the
    encoder runs (see :class:`~embedcluster.transfer.pipeline.TransferClustering`)."""
    from ..data import Dataset, as_feature_matrix, load

    encoders = _encoder_list(encoder)
    ds = data if isinstance(data, Dataset) else load(data)
    out: Dict[str, Any] = {}
    if raw and ds.kind != "texts":
        out["raw"] = (np.asarray(as_feature_matrix(ds), np.float32), None)
    if not encoders:
        if not out:
            raise ValueError("texts have no raw features: pass an encoder (e.g. 'all-MiniLM-L6-v2')")
        return out
    if ds.kind == "images" and np.asarray(ds.X).dtype != np.uint8 and float(np.max(ds.X)) > 1.0:
        logger.warning("the images are %s with values up to %g; image encoders read uint8 0..255 or floats in "
                       "[0, 1], so the encoder's candidates see them saturated: scale them first",
                       np.asarray(ds.X).dtype, float(np.max(ds.X)))
    for spec in encoders:
        out.update(_encoder_candidates(ds, spec, encoder_options, batch_size, progress, device))
    return out


def _encoder_list(encoder: Any) -> List[Any]:
    """``encoder`` of :func:`candidate_representations` as a list (empty for None); several must be
    distinct names or paths, which name their candidates."""
    if encoder is None:
        return []
    if isinstance(encoder, (list, tuple)):
        specs = list(encoder)
        if not specs:
            raise ValueError("encoder is an empty list: name one or more encoders, or pass None for raw features")
        if len(specs) > 1:
            bad = [s for s in specs if not isinstance(s, str) or not s or s == "raw"]
            if bad:
                raise ValueError(f"several encoders are given by their names or paths (strings other than 'raw'), "
                                 f"which name their candidates; got {bad!r}")
            twice = sorted({s for s in specs if specs.count(s) > 1})
            if twice:
                raise ValueError(f"encoder {twice[0]!r} is listed twice")
        return specs
    return [encoder]


def _encoder_candidates(ds: Any, encoder: Any, encoder_options: Optional[Dict[str, Any]], batch_size: int,
                        progress: bool, device: Optional[str]) -> Dict[str, Any]:
    """One encoder's candidates for :func:`candidate_representations`: each default tap, or its output."""
    from ..encoders import load_encoder

    options = {k: v for k, v in (encoder_options or {}).items() if k != "embedding_layer"}
    at = {} if device is None else {"device": device}
    taps = default_taps(load_encoder(encoder, **options, **at))
    if taps is None:
        enc = load_encoder(encoder, **(encoder_options or {}), **at)
        Z = np.asarray(enc.encode(ds, batch_size=batch_size, progress=progress), np.float32)
        return {str(encoder): (Z, dict(encoder_options) if encoder_options else None)}
    enc = load_encoder(encoder, **options, **at, embedding_layer=taps)
    return {f"{encoder} {layer}": (Z, {**options, "embedding_layer": layer})
            for layer, Z in encoder_taps(enc, ds, taps, batch_size=batch_size, progress=progress).items()}


def encoder_of(name: str, encoders: Union[None, str, Sequence[str]]) -> Optional[str]:
    """Which of ``encoders`` (as given to :func:`candidate_representations`) the candidate
    ``name`` came from: None for ``"raw"`` and the consensus; the longest matching name wins
    (``"a"`` and ``"a b"`` can both be encoders)."""
    if name in ("raw", CONSENSUS):
        return None
    found = [str(e) for e in _encoder_list(encoders) if name == str(e) or name.startswith(f"{e} ")]
    if not found:
        raise ValueError(f"candidate {name!r} comes from none of the encoders {_encoder_list(encoders)!r}")
    return max(found, key=len)


def encoder_weights(weights: Mapping[str, float], encoders: Union[None, str, Sequence[str]]) -> Dict[str, float]:
    """Each encoder's summed weight in a consensus (``weights``: its row's ``"weights"``,
    representation -> weight), over the candidates :func:`encoder_of` gives it; in the encoders'
    order, 0 for one without weight. ``run --select auto`` deploys the encoder with the largest
    (the first listed on a tie)."""
    out = {str(e): 0.0 for e in _encoder_list(encoders)}
    for name, w in weights.items():
        owner = encoder_of(name, encoders)
        if owner is not None:
            out[owner] += float(w)
    return out


__all__ = ["CONSENSUS", "METHOD_NAMES", "GivenClusters", "Selection", "candidate_representations",
           "common_space_distances", "common_space_neighbours", "consensus_labels", "default_taps", "encoder_of",
           "encoder_taps", "encoder_weights", "neighbour_consistency", "select_clustering"]
