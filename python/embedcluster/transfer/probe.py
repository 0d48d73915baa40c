"""Linear probes on embeddings: self-labeling from confident cluster pseudo-labels (the
deployable predictor of the pipeline) and linear evaluation on true labels.

Training uses torch (imported when ``fit`` runs); prediction is numpy only, so a probe rebuilt
with :meth:`LinearProbe.from_arrays` predicts without torch.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.validation import check_is_fitted

from .._io import to_numpy
from .._progress import shown_range

PROBE_KIND = "linear_probe"
PROBE_VERSION = 1

#: Target size in bytes of the row blocks that prediction and margins work in (n x k values).
_BLOCK_BYTES = 256 * 2**20


def _check_memory(nbytes: float, what: str, memory_limit: Any, hint: str) -> None:
    from ..metrics._validation import _check_dense  # one budget rule for the package's Python layer

    _check_dense(nbytes, what, memory_limit, hint)


def _as_2d_float32(Z: Any, name: str = "Z") -> np.ndarray:
    Z = np.asarray(Z)
    if Z.ndim != 2:
        raise ValueError(f"{name} should be 2-D (n_samples, n_features), got shape {Z.shape}")
    if Z.dtype != np.float32:
        Z = Z.astype(np.float32)
    if not np.isfinite(Z).all():
        raise ValueError(f"{name} contains NaN or infinity; clean or impute the embeddings first")
    return np.ascontiguousarray(Z)


class LinearProbe(ClassifierMixin, BaseEstimator):
    """Multinomial logistic regression on embeddings, trained with torch (Adam, mini-batches).

    Parameters
    ----------
    n_classes : int, optional
        With a number, labels must be integers in ``[0, n_classes)`` and the probe has one
        output per class even when some are absent from the training rows (pseudo-labels of a
        clusterer with ``k`` clusters). With None the classes are ``np.unique(y)`` (any labels).
    epochs : int
        Passes over the training rows.
    lr : float
        Peak Adam learning rate; it decays to zero on a cosine schedule, which lets this
        convex problem settle near its optimum.
    weight_decay : float
        L2 penalty ``weight_decay / 2 * ||W||²`` on the weights (not the bias), on standardised
        features.
    batch_size : int
        Rows per step.
    seed : int
        Seeds the shuffling (weights start at zero), so ``fit`` is reproducible.
    standardize : {"global", "feature", "none"}
        How features are scaled for training (the scaling is folded into ``coef_`` /
        ``intercept_`` afterwards, so the probe stays one linear layer on raw inputs).
        ``"global"`` (default) centres and divides every feature by one common scale (the RMS
        distance to the mean per feature): the Euclidean geometry the clusterer saw is kept, and
        the L2 penalty treats every direction alike. ``"feature"`` scales each feature to unit
        variance, which inflates near-constant features (such as border pixels) into noise
        directions as strong as the informative ones. ``"none"`` trains on ``Z`` as is.
    num_threads : int, optional
        torch threads for ``fit`` (restored afterwards).
    memory_limit : int, optional
        Bytes that training may allocate for the weights, their gradients and Adam's state
        (16 n_classes n_features), the logits of a batch and the standardised copy of ``Z``;
        0: no limit; None: the default memory limit (3/4 of the available memory). Checked
        before anything is allocated, so a label range or ``n_classes`` that would need more
        raises MemoryError instead of exhausting memory.

    Attributes
    ----------
    classes_ : ndarray (n_classes,)
    coef_ : ndarray float32 (n_classes, n_features)
    intercept_ : ndarray float32 (n_classes,)
    n_features_in_ : int
    loss_curve_ : list of float, mean training loss per epoch
    n_iter_ : int, epochs run
    """

    def __init__(self, n_classes: Optional[int] = None, *, epochs: int = 100, lr: float = 0.01,
                 weight_decay: float = 1e-4, batch_size: int = 256, seed: int = 0,
                 standardize: str = "global", num_threads: Optional[int] = None,
                 memory_limit: Optional[int] = None) -> None:
        self.n_classes = n_classes
        self.epochs = epochs
        self.lr = lr
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.seed = seed
        self.standardize = standardize
        self.num_threads = num_threads
        self.memory_limit = memory_limit

    # ------------------------------------------------------------------ fitting
    def _encode_labels(self, y: Any, n: int, d: int) -> np.ndarray:
        """Class index per row; sets ``classes_``. Nothing is sized by a label's value: with
        ``n_classes=None`` the classes are the distinct values (any labels: huge, negative,
        strings); with ``n_classes`` the range is checked first, and the training memory of
        ``k`` classes is checked before ``classes_`` or any weight exists."""
        y = np.asarray(y)
        if y.ndim != 1 or len(y) != n:
            raise ValueError(f"y should be 1-D with one label per row (n={n}), got shape {y.shape}")
        if self.n_classes is None:
            if y.dtype.kind == "f" and not np.isfinite(y).all():
                raise ValueError("y contains NaN or infinity; labels should be finite values")
            classes, idx = np.unique(y, return_inverse=True)
            self._check_training_memory(len(classes), n, d)
            self.classes_ = classes
            return idx.reshape(-1).astype(np.int64)
        if isinstance(self.n_classes, (bool, np.bool_)) or not isinstance(self.n_classes, numbers.Integral):
            raise ValueError(f"n_classes={self.n_classes!r} should be an integer >= 1 or None")
        k = int(self.n_classes)
        if k < 1:
            raise ValueError(f"n_classes={self.n_classes} should be >= 1")
        if not np.issubdtype(y.dtype, np.integer):
            raise ValueError(f"with n_classes={k}, y should hold integers in [0, {k}); got dtype "
                             f"{y.dtype} (pass n_classes=None for arbitrary labels)")
        if n and (y.min() < 0 or y.max() >= k):
            raise ValueError(f"y has labels in [{y.min()}, {y.max()}] but n_classes={k}; labels "
                             f"should be in [0, {k}) (drop noise points labelled -1 first)")
        self._check_training_memory(k, n, d)
        self.classes_ = np.arange(k)
        return y.astype(np.int64)

    def _check_training_memory(self, k: int, n: int, d: int) -> None:
        bs = max(1, min(int(self.batch_size), n))
        need = 16.0 * k * d + 16.0 * bs * k + 8.0 * k + 4.0 * n * d
        _check_memory(need, f"LinearProbe.fit: {k} classes x {d} features (weights, gradients and Adam "
                      f"state, 16 bytes each) and {n} rows", self.memory_limit,
                      "pass n_classes=None so that classes are the distinct labels, encode the labels "
                      "as 0..k-1, or pass memory_limit= in bytes (0: no limit)")

    def fit(self, Z: Any, y: Any, sample_weight: Any = None) -> LinearProbe:
        """Trains on embeddings ``Z`` (n, d) and labels ``y``; ``sample_weight`` (n,) weighs
        each row's loss. Returns self."""
        import torch
        from torch.nn import functional as F

        Z = _as_2d_float32(Z)
        n, d = Z.shape
        if n < 1:
            raise ValueError("n_samples=0; the probe needs at least one training row")
        for name, v, lo in (("epochs", self.epochs, 1), ("batch_size", self.batch_size, 1)):
            if int(v) < lo:
                raise ValueError(f"{name}={v} should be >= {lo}")
        yi = self._encode_labels(y, n, d)
        if not self.lr > 0 or self.weight_decay < 0:
            raise ValueError(f"lr={self.lr} should be > 0 and weight_decay={self.weight_decay} >= 0")
        if sample_weight is None:
            w = np.ones(n, np.float32)
        else:
            w = np.asarray(sample_weight, dtype=np.float32)
            if w.shape != (n,) or (w < 0).any() or not np.isfinite(w).all() or w.sum() <= 0:
                raise ValueError("sample_weight should be (n_samples,), finite, >= 0, not all zero")
        if self.standardize not in ("global", "feature", "none"):
            raise ValueError(f"standardize={self.standardize!r} should be 'global', 'feature' or 'none'")
        block = max(1, _BLOCK_BYTES // (8 * d))  # float64 temporaries of row blocks, not of Z
        if self.standardize == "global":
            mean = Z.mean(0, dtype=np.float64)
            sq = np.concatenate([((Z[s:s + block] - mean) ** 2).sum(1) for s in range(0, n, block)])
            std = np.full(d, max(float(np.sqrt(sq.mean() / d)), 1e-12))
        elif self.standardize == "feature":
            mean = Z.mean(0, dtype=np.float64)
            std = Z.std(0, dtype=np.float64)
            std[std < 1e-12] = 1.0
        else:
            mean, std = np.zeros(d), np.ones(d)
        k = len(self.classes_)
        prev_threads = torch.get_num_threads()
        if self.num_threads is not None:
            torch.set_num_threads(int(self.num_threads))
        try:
            g = torch.Generator().manual_seed(int(self.seed))
            Zs = np.empty((n, d), np.float32)
            for s in range(0, n, block):
                Zs[s:s + block] = (Z[s:s + block] - mean) / std
            Zt = torch.from_numpy(Zs)
            yt, wt = torch.from_numpy(yi), torch.from_numpy(w)
            W = torch.zeros(k, d, requires_grad=True)
            b = torch.zeros(k, requires_grad=True)
            opt = torch.optim.Adam([{"params": [W], "weight_decay": float(self.weight_decay)},
                                    {"params": [b], "weight_decay": 0.0}], lr=float(self.lr))
            bs = int(self.batch_size)
            steps = int(self.epochs) * math.ceil(n / bs)
            sched = torch.optim.lr_scheduler.LambdaLR(
                opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
            self.loss_curve_: List[float] = []
            # Progress as the caller shows it (TransferClustering, the command line).
            for _ in shown_range(int(self.epochs), "probe training", unit="epoch"):
                perm = torch.randperm(n, generator=g)
                total = 0.0
                for idx in torch.split(perm, bs):
                    logits = Zt[idx] @ W.T + b
                    wb = wt[idx]
                    ce = F.cross_entropy(logits, yt[idx], reduction="none")
                    loss = (ce * wb).sum() / wb.sum().clamp_min(1e-12)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    sched.step()
                    total += float(loss.detach()) * len(idx)
                self.loss_curve_.append(total / n)
        finally:
            torch.set_num_threads(prev_threads)
        Wn = to_numpy(W).astype(np.float64) / std[None, :]
        self.coef_ = Wn.astype(np.float32)
        self.intercept_ = (to_numpy(b).astype(np.float64) - Wn @ mean).astype(np.float32)
        self.n_features_in_ = d
        self.n_iter_ = int(self.epochs)
        return self

    # ------------------------------------------------------------------ prediction (numpy)
    def _checked_input(self, Z: Any) -> np.ndarray:
        check_is_fitted(self, "coef_")
        Z = _as_2d_float32(Z)
        if Z.shape[1] != self.n_features_in_:
            raise ValueError(f"Z has {Z.shape[1]} features, but LinearProbe is expecting "
                             f"{self.n_features_in_} features as input.")
        return Z

    def _blocks(self, n: int):
        """Row ranges whose (rows, n_classes) float32 logits stay within _BLOCK_BYTES (one
        block for ordinary inputs, so results equal the unblocked computation there)."""
        rows = max(1, _BLOCK_BYTES // (16 * max(1, len(self.classes_))))
        return [(s, min(n, s + rows)) for s in range(0, n, rows)] or [(0, 0)]

    def _logits(self, Z: np.ndarray) -> np.ndarray:
        return Z @ self.coef_.T + self.intercept_

    @staticmethod
    def _softmax(s: np.ndarray) -> np.ndarray:
        s = s - s.max(1, keepdims=True)
        e = np.exp(s)
        return e / e.sum(1, keepdims=True)

    def _check_output(self, n: int, what: str) -> None:
        _check_memory(4.0 * n * len(self.classes_) * 3, f"LinearProbe.{what}: {n} rows x "
                      f"{len(self.classes_)} classes of float32 (and its temporaries)", self.memory_limit,
                      "use predict (it works in row blocks) or pass fewer rows at a time")

    def decision_function(self, Z: Any) -> np.ndarray:
        """Logits ``Z @ coef_.T + intercept_`` as float32 (n, n_classes)."""
        Z = self._checked_input(Z)
        self._check_output(len(Z), "decision_function")
        return self._logits(Z)

    def predict_proba(self, Z: Any) -> np.ndarray:
        """Softmax of the logits, (n, n_classes)."""
        Z = self._checked_input(Z)
        self._check_output(len(Z), "predict_proba")
        return self._softmax(self._logits(Z))

    def _max_proba(self, Z: np.ndarray) -> np.ndarray:
        """``predict_proba(Z).max(1)`` in row blocks."""
        Z = self._checked_input(Z)
        return np.concatenate([self._softmax(self._logits(Z[a:b])).max(1) for a, b in self._blocks(len(Z))])

    def predict(self, Z: Any) -> np.ndarray:
        """The class with the largest logit (ties: the first); works in row blocks."""
        Z = self._checked_input(Z)
        idx = np.concatenate([np.argmax(self._logits(Z[a:b]), axis=1) for a, b in self._blocks(len(Z))])
        return self.classes_[idx]

    def score(self, X: Any, y: Any, sample_weight: Any = None) -> float:
        """Mean accuracy of ``predict(X)`` against ``y`` (any label values, floats included,
        which scikit-learn's accuracy_score would take for a regression target)."""
        y = np.asarray(y)
        pred = self.predict(X)
        if y.shape != pred.shape:
            raise ValueError(f"y should have shape {pred.shape}, got {y.shape}")
        return float(np.average(pred == y, weights=sample_weight))

    # ------------------------------------------------------------------ export
    def to_arrays(self) -> Tuple[Dict[str, np.ndarray], Dict[str, Any]]:
        """Export as ``({"weight": (C, d) float32, "bias": (C,) float32}, config)``.

        The arrays are ready for ``safetensors.numpy.save_file``; ``config`` is JSON-safe and
        holds the kind, version, classes, feature count and the constructor parameters.
        """
        check_is_fitted(self, "coef_")
        classes = self.classes_.tolist()
        config = {"kind": PROBE_KIND, "version": PROBE_VERSION, "classes": classes,
                  "n_features": int(self.n_features_in_), "params": self.get_params()}
        return {"weight": self.coef_.copy(), "bias": self.intercept_.copy()}, config

    @classmethod
    def from_arrays(cls, arrays: Dict[str, np.ndarray], config: Dict[str, Any]) -> LinearProbe:
        """Rebuilds a fitted probe from :meth:`to_arrays` output (no training, no torch)."""
        if config.get("kind") != PROBE_KIND or config.get("version") != PROBE_VERSION:
            raise ValueError(f"config is not a {PROBE_KIND!r} version {PROBE_VERSION} export "
                             f"(kind={config.get('kind')!r}, version={config.get('version')!r})")
        probe = cls(**config.get("params", {}))
        W = np.ascontiguousarray(arrays["weight"], dtype=np.float32)
        b = np.ascontiguousarray(arrays["bias"], dtype=np.float32)
        classes = np.asarray(config["classes"])
        d = int(config["n_features"])
        if W.shape != (len(classes), d) or b.shape != (len(classes),):
            raise ValueError(f"weight {W.shape} / bias {b.shape} do not match {len(classes)} "
                             f"classes and {d} features")
        probe.coef_, probe.intercept_, probe.classes_ = W, b, classes
        probe.n_features_in_ = d
        probe.n_iter_ = 0
        probe.loss_curve_ = []
        return probe


# ----------------------------------------------------------------------------- self-labeling
def center_margins(Z: Any, labels: Any, centers: Any, *, chunk: int = 65536) -> Tuple[np.ndarray, np.ndarray]:
    """Per point: the Euclidean distance to its own centre and the margin to the nearest other.

    ``margin = min_{j != labels[i]} ||z_i - c_j|| - ||z_i - c_{labels[i]}||`` (float64). For a
    point labelled with its nearest centre (k-means) that is second-nearest minus nearest
    distance; it is negative when another centre is nearer, and +inf with a single centre.
    Noise points (label -1) get NaN for both.
    """
    Z = np.asarray(Z, dtype=np.float64)
    C = np.asarray(centers, dtype=np.float64)
    labels = np.asarray(labels)
    if Z.ndim != 2 or C.ndim != 2 or Z.shape[1] != C.shape[1]:
        raise ValueError(f"Z {Z.shape} and centers {C.shape} should be 2-D with the same "
                         "number of features")
    if labels.shape != (len(Z),) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels should be integers of shape ({len(Z)},), got {labels.dtype} "
                         f"{labels.shape}")
    k = len(C)
    if len(labels) and (labels.min() < -1 or labels.max() >= k):
        raise ValueError(f"labels should be in [0, {k}) (or -1 for noise) for {k} centers; got "
                         f"[{labels.min()}, {labels.max()}]")
    own = np.full(len(Z), np.nan)
    margin = np.full(len(Z), np.nan)
    c2 = (C * C).sum(1)
    chunk = max(1, min(int(chunk), _BLOCK_BYTES // (24 * max(1, k))))  # ~3 float64 (rows, k) blocks
    for s in range(0, len(Z), chunk):
        z = Z[s:s + chunk]
        lab = labels[s:s + chunk]
        dist = np.sqrt(np.maximum((z * z).sum(1)[:, None] + c2[None, :] - 2 * z @ C.T, 0.0))
        ok = lab >= 0
        rows = np.nonzero(ok)[0]
        d_own = dist[rows, lab[ok]]
        dist[rows, lab[ok]] = np.inf
        own[s + rows] = d_own
        margin[s + rows] = dist[rows].min(1) - d_own if k > 1 else np.inf
    return own, margin


def _top_fraction_per_group(groups: np.ndarray, keys: Tuple[np.ndarray, ...], fraction: float) -> np.ndarray:
    """Mask of the first ``ceil(fraction * size)`` rows of each group (label >= 0) when sorted by
    ``keys`` (np.lexsort order: the last key is primary; ties fall to the row index).
    One sort with the group as the primary key: O(n log n) for any number of groups."""
    mask = np.zeros(len(groups), bool)
    order = np.lexsort((np.arange(len(groups)), *keys, groups))
    g_sorted = groups[order]
    starts = np.flatnonzero(np.r_[True, g_sorted[1:] != g_sorted[:-1]]) if len(order) else np.zeros(0, np.int64)
    sizes = np.diff(np.r_[starts, len(order)])
    take = np.maximum(1, np.ceil(fraction * sizes)).astype(np.int64)
    rank = np.arange(len(order)) - np.repeat(starts, sizes)
    keep = (rank < np.repeat(take, sizes)) & (g_sorted >= 0)
    mask[order[keep]] = True
    return mask


def select_confident(Z: Any, labels: Any, centers: Any, *, fraction: Optional[float] = 0.5,
                     margin: Optional[float] = None) -> np.ndarray:
    """Boolean mask of the points whose cluster assignment is most certain.

    Rule: a point's confidence is its distance margin (:func:`center_margins`: distance to the
    nearest other centre minus distance to its own). With ``fraction``, each cluster keeps its
    ``ceil(fraction × size)`` points of largest margin (at least one; ties go to the point
    nearer its centre, then the lower index), so every cluster is represented in proportion to
    its size. With ``margin``, only points with margin ≥ ``margin`` are kept. With both, a
    point must pass both. Noise points (label -1) are never selected.
    """
    if fraction is None and margin is None:
        raise ValueError("give fraction, margin, or both")
    if fraction is not None and not 0 < fraction <= 1:
        raise ValueError(f"fraction={fraction} should be in (0, 1]")
    labels = np.asarray(labels)
    own, marg = center_margins(Z, labels, centers)
    mask = labels >= 0
    if fraction is not None:
        mask &= _top_fraction_per_group(labels, (own, -np.nan_to_num(marg, nan=-np.inf)), fraction)
    if margin is not None:
        mask &= np.nan_to_num(marg, nan=-np.inf) >= margin
    return mask


def _soft_weights(groups: np.ndarray, score: np.ndarray, fraction: float) -> np.ndarray:
    """Per row ``clip(score / q, 0, 1)``, with ``q`` the ``1 - fraction`` quantile of the score in
    the row's group: the top ``fraction`` of each group weighs 1, the rest in proportion to
    their score. Rows with a negative group (noise) weigh 0. Groups are slices of one stable
    sort, so the work is O(n log n) for any number of groups."""
    w = np.zeros(len(groups))
    order = np.argsort(groups, kind="stable")
    g_sorted = groups[order]
    starts: List[int] = list(np.flatnonzero(np.r_[True, g_sorted[1:] != g_sorted[:-1]])) if len(order) else []
    ends = starts[1:] + [len(order)] if len(order) else []
    for a, b in zip(starts, ends):
        if g_sorted[a] < 0:
            continue
        rows = order[a:b]  # ascending row order, as a boolean mask would give
        sc = score[rows]
        q = np.quantile(sc, 1.0 - fraction)
        w[rows] = np.clip(sc / q, 0.0, 1.0) if q > 0 else (sc > 0)
    return w


def self_label(Z: Any, cluster_labels: Any, centers: Any, *, n_rounds: int = 1,
               fraction: float = 0.5, weighting: str = "select",
               **probe_kw: Any) -> Tuple[LinearProbe, List[np.ndarray]]:
    """Trains a linear probe on confident pseudo-labels from a clustering.

    Round 1 fits ``LinearProbe(n_classes=len(centers), **probe_kw)`` on the cluster labels,
    with the confidence of each point given by its distance margin (:func:`center_margins`).
    Each further round (``n_rounds`` in all) relabels every point with the previous probe's
    prediction, takes the maximum softmax probability as confidence, and fits a fresh probe.

    Parameters
    ----------
    Z : array (n, d)
        Embeddings the clustering was computed on.
    cluster_labels : int array (n,)
        Cluster ids in ``[0, len(centers))``; -1 (noise) is never trained on.
    centers : array (k, d)
        Cluster centres.
    n_rounds : int
        Probe trainings in all (1 = no relabeling).
    fraction : float in (0, 1]
        The share of each cluster (round 1) or predicted class (later rounds) counted as
        confident.
    weighting : {"select", "margin"}
        ``"select"``: train only on the confident points (:func:`select_confident`'s rule).
        ``"margin"``: train on every labelled point, weighted ``clip(confidence / q, 0, 1)``
        where ``q`` is the confidence at the ``fraction`` cut of its group, so confident points
        weigh 1 and the others in proportion (negative margins weigh 0).
    **probe_kw
        :class:`LinearProbe` parameters (``n_classes`` defaults to ``len(centers)``).

    Returns
    -------
    probe : LinearProbe
        The last round's probe; its classes are the cluster ids ``0..k-1``.
    labels_history : list of ndarray
        ``[cluster_labels, predictions after round 1, ..., after round n_rounds]``.

    Notes
    -----
    k-means is itself a linear classifier, and the most confident half of each cluster is a
    biased sample of it: with ``"select"`` a probe learns that sample and later rounds
    reinforce its own errors, while ``"margin"`` keeps every point, weighted by how clearly it
    belongs, and so can move the boundary the k-means labels drew.
    """
    if int(n_rounds) < 1:
        raise ValueError(f"n_rounds={n_rounds} should be >= 1")
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction={fraction} should be in (0, 1]")
    if weighting not in ("select", "margin"):
        raise ValueError(f"weighting={weighting!r} should be 'select' or 'margin'")
    Z = _as_2d_float32(Z)
    labels = np.asarray(cluster_labels)
    k = len(np.asarray(centers))
    probe_kw.setdefault("n_classes", k)

    def fit(groups: np.ndarray, confidence: np.ndarray, tiebreak: np.ndarray) -> LinearProbe:
        if weighting == "select":
            keep = (groups >= 0) & _top_fraction_per_group(groups, (tiebreak, -confidence), fraction)
            weight = None
        else:
            w = _soft_weights(groups, confidence, fraction)
            keep = w > 0
            weight = w[keep]
        if not keep.any():
            raise ValueError("no point was selected: every label is -1 (noise) or no point has "
                             "a positive margin")
        return LinearProbe(**probe_kw).fit(Z[keep], groups[keep], sample_weight=weight)

    own, margin = center_margins(Z, labels, centers)
    margin = np.nan_to_num(margin, nan=-np.inf, posinf=np.finfo(np.float64).max)
    probe = fit(labels, margin, np.nan_to_num(own, nan=np.inf))
    history = [labels.copy(), probe.predict(Z)]
    for _ in range(int(n_rounds) - 1):
        pseudo = history[-1]
        conf = probe._max_proba(Z).astype(np.float64)
        probe = fit(pseudo, conf, np.zeros(len(Z)))
        history.append(probe.predict(Z))
    return probe, history


def linear_evaluation(Z_train: Any, y_train: Any, Z_test: Any, y_test: Any, **probe_kw: Any) -> float:
    """Accuracy on ``(Z_test, y_test)`` of a :class:`LinearProbe` fitted on the training split
    (the standard linear evaluation of an encoder's embeddings)."""
    probe = LinearProbe(**probe_kw).fit(Z_train, y_train)
    return float(probe.score(Z_test, y_test))


__all__ = ["LinearProbe", "center_margins", "select_confident", "self_label", "linear_evaluation",
           "PROBE_KIND", "PROBE_VERSION"]
