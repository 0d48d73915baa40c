"""Neighbour-consistency clustering heads on frozen embeddings (SCAN, TEMI).

A small softmax head (linear, or one hidden layer) is trained on fixed vectors so that each
point and its exact cosine nearest neighbours (mined with the native engine) are put in the
same cluster:

* ``method="scan"`` (Van Gansbeke et al. 2020, "SCAN: Learning to Classify Images without
  Labels"): loss ``-mean log <p_i, p_j>`` over (point, random neighbour) pairs, minus
  ``entropy_weight`` times the entropy of the batch's mean prediction, which keeps every
  cluster in use.
* ``method="temi"`` (Adaloglou et al. 2023, "Exploring the Limits of Deep Image Clustering
  using Pretrained Models"): a student head and a teacher head whose weights are an
  exponential moving average of the student's. For a pair (x, x') the loss is the symmetrised
  ``-w * log sum_c (s(c|x) t(c|x'))^beta / q(c)``, with ``q`` a moving average of the teacher's
  cluster marginal (dividing by it is the term against collapse: a cluster that takes every
  point gains nothing) and ``w = sum_c t(c|x) t(c|x')`` the teacher's agreement on the pair,
  which down-weights pairs that are probably not of the same class. The paper trains 50 heads
  on DINO-style normalised outputs; here ``n_heads`` cosine heads (normalised input and prototypes, so
  that the temperatures bound the logits), and by default a small SCAN-style entropy term is
  added (``temi_entropy_weight``; 0 gives the paper's loss).

Either can be followed by self-labeling (SCAN's last step): cross-entropy towards the head's
own argmax on points whose top probability exceeds ``confidence``, with the classes weighted
by their inverse frequency among those points. Frozen vectors have no image augmentations, so
the "strong view" the self-labeling trains on is the vector with feature dropout and Gaussian
noise (``view_dropout``, ``view_noise``).

Training is seeded and runs on the CPU by default with deterministic torch operations.
The head saves as safetensors + JSON (:meth:`ClusterHead.save`, :meth:`ClusterHead.load`).
"""

from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple, Union

import numpy as np

from .._io import load_json, load_safetensors, read_snapshot_with, save_json, save_safetensors, save_snapshot, \
    sha256_array, to_numpy
from .._progress import shown_range

logger = logging.getLogger("embedcluster")

HEAD_FORMAT = "embedcluster-cluster-head"
HEAD_VERSION = 1
METHODS = ("scan", "temi")
PathLike = Union[str, os.PathLike]
# Rows per block when the head is applied to many points (bounds the temporaries).
_PREDICT_BLOCK = 8192
# Least optimiser steps of the neighbour loss and of self-labeling: a few hundred points make
# one batch per epoch, and that many epochs would leave the head barely trained.
_MIN_STEPS = 300
_MIN_SELF_LABEL_STEPS = 50


def _normalised_rows(Z: Any, name: str = "Z") -> np.ndarray:
    """Finite, nonzero float32 rows scaled to unit length; errors name the first bad row."""
    Z = np.asarray(Z)
    if Z.ndim != 2:
        raise ValueError(f"{name} should be a 2-D array (n_samples, n_features), got shape {Z.shape}")
    if Z.shape[0] == 0 or Z.shape[1] == 0:
        raise ValueError(f"{name} has shape {Z.shape}; it needs at least one row and one feature")
    if not np.issubdtype(Z.dtype, np.number) or np.issubdtype(Z.dtype, np.complexfloating):
        raise ValueError(f"{name} should hold real numbers, got dtype {Z.dtype}")
    Z = np.ascontiguousarray(Z, np.float32)
    finite = np.isfinite(Z).all(1)
    if not finite.all():
        bad = np.flatnonzero(~finite)
        raise ValueError(f"{name} has {len(bad)} rows with NaN or infinity (first: row {bad[0]}); "
                         "drop or repair them first")
    norms = np.linalg.norm(Z, axis=1)
    if (norms == 0).any():
        bad = np.flatnonzero(norms == 0)
        raise ValueError(f"{name} has {len(bad)} all-zero rows (first: row {bad[0]}); the cosine geometry "
                         "of the head is undefined for them")
    return np.ascontiguousarray(Z / norms[:, None], np.float32)


def mine_neighbors(Zn: np.ndarray, n_neighbors: int, n_threads: Optional[int] = None,
                   verbose: Any = None) -> np.ndarray:
    """Exact cosine k nearest neighbours of every row among the others (native engine self-join),
    as an (n, n_neighbors) int64 index array."""
    from ..cluster import NearestNeighbors

    nn = NearestNeighbors(n_neighbors=n_neighbors, metric="cosine", n_threads=n_threads, verbose=verbose).fit(Zn)
    return np.asarray(nn.kneighbors(return_distance=False), np.int64)


class _Head:
    """The softmax head's parameters and forward pass (plain tensors, so that the teacher copy
    and the save format stay simple). A cosine head (TEMI) compares the L2-normalised input
    (or hidden layer) with L2-normalised cluster prototypes, so its logits lie in [-1, 1]
    before ``scale``: the temperatures then set how sharp the softmax is, as in the paper.
    ``n_heads`` heads of ``k`` outputs share the hidden layer; :meth:`logits` gives (n, heads, k)."""

    def __init__(self, d: int, k: int, hidden: int, gen: Any, cosine: bool = False, n_heads: int = 1):
        import torch

        def layer(n_in: int, n_out: int) -> List[Any]:
            bound = 1.0 / math.sqrt(n_in)
            W = (torch.rand(n_out, n_in, generator=gen) * 2 - 1) * bound
            return [W.requires_grad_(), torch.zeros(n_out, requires_grad=True)]

        self.params = layer(d, hidden) + layer(hidden, n_heads * k) if hidden > 0 else layer(d, n_heads * k)
        self.cosine, self.scale, self.k, self.n_heads = cosine, 1.0, k, n_heads

    def copy(self) -> _Head:
        """A detached copy (the TEMI teacher)."""
        twin = _Head.__new__(_Head)
        twin.params = [p.detach().clone() for p in self.params]
        twin.cosine, twin.scale, twin.k, twin.n_heads = self.cosine, self.scale, self.k, self.n_heads
        return twin

    def select(self, h: int) -> None:
        """Keeps head ``h`` only."""
        rows = slice(h * self.k, (h + 1) * self.k)
        self.params[-2:] = [p.detach()[rows].clone().requires_grad_() for p in self.params[-2:]]
        self.n_heads = 1

    def logits(self, X: Any) -> Any:
        import torch
        from torch.nn import functional as F

        if len(self.params) == 4:
            X = torch.relu(X @ self.params[0].T + self.params[1])
        if self.cosine:
            out = F.normalize(X, dim=1) @ F.normalize(self.params[-2], dim=1).T
        else:
            out = X @ self.params[-2].T + self.params[-1]
        return (self.scale * out).reshape(X.shape[0], self.n_heads, self.k)


class ClusterHead:
    """Neighbour-consistency clustering head (SCAN or TEMI) on frozen embeddings.

    Parameters
    ----------
    n_clusters : clusters (softmax outputs), >= 2.
    method : "scan" or "temi" (see the module notes).
    n_neighbors : exact cosine neighbours mined per point (the pairs the head makes agree).
    epochs : passes over the points for the neighbour loss (more on small sets, so that there
        are at least 300 optimiser steps).
    hidden : width of the hidden layer (ReLU); 0 for a linear head; None: 256 for SCAN, 0 for
        TEMI (its cosine heads settle in fewer poor optima when linear).
    n_heads : heads trained side by side (sharing the hidden layer); the one with the lowest
        loss in the last epoch is kept, as in both papers.
    batch_size, lr, weight_decay : Adam optimisation of the head (cosine learning-rate decay).
    entropy_weight : SCAN's weight of the entropy of the mean prediction (the paper's 5 gave
        lower ACC than 3 on both benchmarks in benchmarks/heads.py: text 0.696 vs 0.738,
        Fashion-MNIST PCA 128 0.632 vs 0.672, means of 3 seeds).
    temi_entropy_weight : the same term added to TEMI's loss (not in the paper, whose term
        against collapse is the division by the cluster marginal; with one head instead of the
        paper's 50 it lifted ACC on the text benchmark from 0.54 to 0.61). 0: the paper's loss.
    beta, momentum, marginal_momentum, student_temperature, teacher_temperature :
        TEMI's exponent on the pair probabilities, EMA factor of the teacher's weights (per
        step), EMA factor of the cluster marginal, and the softmax temperatures.
    self_label : run self-labeling after the neighbour loss.
    confidence : top probability a point needs to be self-labelled.
    self_label_epochs : passes of self-labeling (at least 50 steps).
    view_dropout, view_noise : the strong view for self-labeling: feature dropout rate and
        Gaussian noise (standard deviation, in the units of the standardised input).
    random_state : seed of the initialisation, the neighbour sampling and the batches.
    device : torch device ("cpu"; results are deterministic there).
    n_threads : torch and engine threads while fitting (None: leave torch's setting).
    verbose : progress of ``fit`` (the neighbour search, then the training epochs), as
        ``embedcluster.KMeans``'s ``verbose``: 0 / False silent, 1 / True shown, None (default)
        shown only inside a caller that shows progress (the command line, ``TransferClustering``).
        Not saved with the head.

    Attributes (after fit)
    ----------------------
    labels_ (n,), neighbors_ (n, n_neighbors) indices, loss_curve_ (mean loss of the heads per
    epoch), head_losses_ (each head's loss in the last epoch), selected_head_,
    n_confident_ (points self-labelled in the last self-labeling pass; 0 without it),
    n_features_in_, fit_time_ (seconds).
    """

    def __init__(self, n_clusters: int = 10, method: str = "scan", *, n_neighbors: int = 20, epochs: int = 30,
                 hidden: Optional[int] = None, n_heads: int = 10, batch_size: int = 256, lr: float = 1e-2,
                 weight_decay: float = 1e-4,
                 entropy_weight: float = 3.0, temi_entropy_weight: float = 1.0, beta: float = 0.6,
                 momentum: float = 0.99, marginal_momentum: float = 0.9, student_temperature: float = 0.2,
                 teacher_temperature: float = 0.1, self_label: bool = True, confidence: float = 0.99,
                 self_label_epochs: int = 10, view_dropout: float = 0.1, view_noise: float = 0.1,
                 random_state: int = 0, device: str = "cpu", n_threads: Optional[int] = None,
                 verbose: Any = None):
        self.n_clusters = n_clusters
        self.method = method
        self.n_neighbors = n_neighbors
        self.epochs = epochs
        self.hidden = hidden
        self.n_heads = n_heads
        self.batch_size = batch_size
        self.lr = lr
        self.weight_decay = weight_decay
        self.entropy_weight = entropy_weight
        self.temi_entropy_weight = temi_entropy_weight
        self.beta = beta
        self.momentum = momentum
        self.marginal_momentum = marginal_momentum
        self.student_temperature = student_temperature
        self.teacher_temperature = teacher_temperature
        self.self_label = self_label
        self.confidence = confidence
        self.self_label_epochs = self_label_epochs
        self.view_dropout = view_dropout
        self.view_noise = view_noise
        self.random_state = random_state
        self.device = device
        self.n_threads = n_threads
        self.verbose = verbose

    # ------------------------------------------------------------------ parameters
    def get_params(self, deep: bool = True) -> Dict[str, Any]:
        """The constructor's parameters (scikit-learn convention)."""
        import inspect

        names = [p for p in inspect.signature(type(self).__init__).parameters if p != "self"]
        return {n: getattr(self, n) for n in names}

    def set_params(self, **params: Any) -> ClusterHead:
        """Sets constructor parameters (scikit-learn convention)."""
        known = self.get_params()
        for name, value in params.items():
            if name not in known:
                raise ValueError(f"unknown parameter {name!r} of ClusterHead; known: {sorted(known)}")
            setattr(self, name, value)
        return self

    def _check_params(self, n: int) -> None:
        def is_int(v: Any) -> bool:
            return isinstance(v, (int, np.integer)) and not isinstance(v, bool)

        if not is_int(self.n_clusters) or self.n_clusters < 2:
            raise ValueError(f"n_clusters={self.n_clusters!r} should be an integer >= 2")
        if self.method not in METHODS:
            raise ValueError(f"method={self.method!r} should be one of {METHODS}")
        if not is_int(self.n_neighbors) or self.n_neighbors < 1:
            raise ValueError(f"n_neighbors={self.n_neighbors!r} should be an integer >= 1")
        if self.n_neighbors > n - 1:
            raise ValueError(f"n_neighbors={self.n_neighbors} but there are only {n} points; each point needs "
                             f"that many other points (n_neighbors <= {n - 1})")
        if self.n_clusters > n:
            raise ValueError(f"n_clusters={self.n_clusters} is more than the {n} points")
        if self.hidden is not None and (not is_int(self.hidden) or self.hidden < 0):
            raise ValueError(f"hidden={self.hidden!r} should be None or an integer >= 0")
        for name, lo in (("epochs", 1), ("n_heads", 1), ("batch_size", 1), ("self_label_epochs", 1)):
            v = getattr(self, name)
            if not is_int(v) or v < lo:
                raise ValueError(f"{name}={v!r} should be an integer >= {lo}")
        for name in ("lr", "student_temperature", "teacher_temperature", "beta"):
            if not _positive(getattr(self, name)):
                raise ValueError(f"{name}={getattr(self, name)!r} should be a finite number > 0")
        for name in ("weight_decay", "entropy_weight", "temi_entropy_weight", "view_noise"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and 0 <= v < math.inf):
                raise ValueError(f"{name}={v!r} should be a finite number >= 0")
        for name in ("momentum", "marginal_momentum", "view_dropout"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and 0 <= v < 1):
                raise ValueError(f"{name}={v!r} should be a number in [0, 1)")
        if not (isinstance(self.confidence, (int, float)) and 0 < self.confidence < 1):
            raise ValueError(f"confidence={self.confidence!r} should be a number in (0, 1)")

    # ------------------------------------------------------------------ fitting
    def fit(self, Z: Any, y: Any = None) -> ClusterHead:
        """Mines the neighbours of ``Z`` (n, d), trains the head, sets ``labels_``. ``y`` is ignored."""
        import torch

        Zn = _normalised_rows(Z)
        n, d = Zn.shape
        self._check_params(n)
        start = time.perf_counter()
        prev_threads = torch.get_num_threads()
        if self.n_threads is not None:
            torch.set_num_threads(int(self.n_threads))
        try:
            self.neighbors_ = mine_neighbors(Zn, int(self.n_neighbors), self.n_threads, self.verbose)
            logger.info("ClusterHead: %d exact cosine neighbours of %d points in %.1f s", self.n_neighbors, n,
                        time.perf_counter() - start)
            self.input_mean_ = Zn.mean(0, dtype=np.float64).astype(np.float32)
            spread = float(np.sqrt(((Zn - self.input_mean_) ** 2).sum(1).mean() / d))
            self.input_scale_ = np.float32(1.0 / max(spread, 1e-12))
            with torch.random.fork_rng(devices=[]), _deterministic():
                self._train(Zn)
        finally:
            torch.set_num_threads(prev_threads)
        self.n_features_in_ = d
        self.labels_ = self.predict_proba(Zn).argmax(1).astype(np.int64)
        self.fit_time_ = time.perf_counter() - start
        logger.info("ClusterHead(%s): %d clusters in use, %.1f s", self.method, len(np.unique(self.labels_)),
                    self.fit_time_)
        return self

    def fit_predict(self, Z: Any, y: Any = None) -> np.ndarray:
        """``fit(Z).labels_``."""
        return self.fit(Z).labels_

    def _train(self, Zn: np.ndarray) -> None:
        import torch

        torch.manual_seed(int(self.random_state))
        gen = torch.Generator().manual_seed(int(self.random_state))
        dev = torch.device(self.device)
        X = torch.from_numpy((Zn - self.input_mean_) * self.input_scale_).to(dev)
        nbr = torch.from_numpy(self.neighbors_).to(dev)
        hidden = self.hidden if self.hidden is not None else (256 if self.method == "scan" else 0)
        head = _Head(X.shape[1], int(self.n_clusters), int(hidden), gen, cosine=self.method == "temi",
                     n_heads=int(self.n_heads))
        head.params = [p.detach().to(dev).requires_grad_() for p in head.params]
        self.loss_curve_: List[float] = []
        if self.method == "scan":
            self._train_scan(head, X, nbr, gen)
        else:
            self._train_temi(head, X, nbr, gen)
        # As in both papers: of the heads trained side by side, the one with the lowest loss.
        self.selected_head_ = int(np.argmin(self.head_losses_))
        head.select(self.selected_head_)
        self.n_confident_ = 0
        if self.self_label:
            self._self_label(head, X, gen)
        self._params = [to_numpy(p.detach().cpu()).astype(np.float32) for p in head.params]
        self.cosine_, self.logit_scale_ = head.cosine, float(head.scale)

    def _passes(self, n: int, epochs: int, min_steps: int) -> Tuple[int, int]:
        """Passes over n rows (``epochs``, more on small sets to reach ``min_steps``) and the steps."""
        per_pass = math.ceil(n / int(self.batch_size))
        passes = max(int(epochs), math.ceil(min_steps / per_pass))
        return passes, passes * per_pass

    def _optimizer(self, params: List[Any], steps: int):
        import torch

        opt = torch.optim.Adam(params, lr=float(self.lr), weight_decay=float(self.weight_decay))
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / max(steps, 1))))
        return opt, sched

    def _pairs(self, n: int, nbr: Any, gen: Any) -> Iterator[Tuple[Any, Any]]:
        """Batches of (anchor rows, one neighbour of each drawn at random), a fresh order each call."""
        import torch

        perm = torch.randperm(n, generator=gen).to(nbr.device)
        pick = torch.randint(0, nbr.shape[1], (n,), generator=gen).to(nbr.device)
        for idx in torch.split(perm, int(self.batch_size)):
            yield idx, nbr[idx, pick[idx]]

    def _train_scan(self, head: _Head, X: Any, nbr: Any, gen: Any) -> None:
        import torch

        n = X.shape[0]
        passes, steps = self._passes(n, self.epochs, _MIN_STEPS)
        opt, sched = self._optimizer(head.params, steps)
        for epoch in shown_range(passes, "ClusterHead scan training", verbose=self.verbose, unit="epoch"):
            per_head = torch.zeros(head.n_heads)
            for a, b in self._pairs(n, nbr, gen):
                pa = torch.softmax(head.logits(X[a]), -1)
                pb = torch.softmax(head.logits(X[b]), -1)
                consistency = -torch.log((pa * pb).sum(-1).clamp_min(1e-8)).mean(0)
                mean_p = pa.mean(0).clamp_min(1e-8)
                entropy = -(mean_p * torch.log(mean_p)).sum(-1)
                losses = consistency - float(self.entropy_weight) * entropy
                _step(opt, sched, losses.sum())
                per_head += losses.detach().cpu() * len(a)
            self._end_epoch(per_head / n)
            logger.debug("ClusterHead scan epoch %d/%d mean loss %.4f", epoch + 1, passes, self.loss_curve_[-1])

    def _end_epoch(self, per_head: Any) -> None:
        """Records an epoch's mean loss of each head (the last epoch's picks the head)."""
        self.head_losses_ = per_head.numpy().astype(np.float64)
        self.loss_curve_.append(float(self.head_losses_.mean()))

    def _temi_pair_loss(self, s_a: Any, s_b: Any, t_a: Any, t_b: Any, marginal: Any) -> Any:
        """Symmetrised, agreement-weighted beta-PMI between student and teacher of a pair, per head."""
        import torch

        beta = float(self.beta)
        weight = (t_a * t_b).sum(-1)
        ab = torch.log((((s_a * t_b) ** beta) / marginal).sum(-1).clamp_min(1e-30))
        ba = torch.log((((s_b * t_a) ** beta) / marginal).sum(-1).clamp_min(1e-30))
        return -(weight * 0.5 * (ab + ba)).mean(0)

    def _train_temi(self, student: _Head, X: Any, nbr: Any, gen: Any) -> None:
        import torch

        n = X.shape[0]
        k = int(self.n_clusters)
        teacher = student.copy()
        marginal = torch.full((student.n_heads, k), 1.0 / k, device=X.device)
        passes, steps = self._passes(n, self.epochs, _MIN_STEPS)
        opt, sched = self._optimizer(student.params, steps)
        ts, tt, m = float(self.student_temperature), float(self.teacher_temperature), float(self.momentum)
        for epoch in shown_range(passes, "ClusterHead temi training", verbose=self.verbose, unit="epoch"):
            per_head = torch.zeros(student.n_heads)
            for a, b in self._pairs(n, nbr, gen):
                with torch.no_grad():
                    t_a = torch.softmax(teacher.logits(X[a]) / tt, -1)
                    t_b = torch.softmax(teacher.logits(X[b]) / tt, -1)
                    batch_marginal = 0.5 * (t_a.mean(0) + t_b.mean(0))
                    marginal = float(self.marginal_momentum) * marginal + \
                        (1 - float(self.marginal_momentum)) * batch_marginal
                s_a = torch.softmax(student.logits(X[a]) / ts, -1)
                s_b = torch.softmax(student.logits(X[b]) / ts, -1)
                losses = self._temi_pair_loss(s_a, s_b, t_a, t_b, marginal)
                if self.temi_entropy_weight > 0:
                    mean_s = (0.5 * (s_a.mean(0) + s_b.mean(0))).clamp_min(1e-8)
                    losses = losses + float(self.temi_entropy_weight) * (mean_s * torch.log(mean_s)).sum(-1)
                _step(opt, sched, losses.sum())
                per_head += losses.detach().cpu() * len(a)
                with torch.no_grad():
                    for pt, ps in zip(teacher.params, student.params):
                        pt.mul_(m).add_(ps.detach(), alpha=1 - m)
            self._end_epoch(per_head / n)
            logger.debug("ClusterHead temi epoch %d/%d mean loss %.4f", epoch + 1, passes, self.loss_curve_[-1])
        # The student's softmax at its temperature is the head's output from now on.
        student.scale = 1.0 / ts

    def _self_label(self, head: _Head, X: Any, gen: Any) -> None:
        """Cross-entropy towards the head's own confident argmax, on the noisy view of each point."""
        import torch
        from torch.nn import functional as F

        n = X.shape[0]
        bs = int(self.batch_size)
        passes, steps = self._passes(n, self.self_label_epochs, _MIN_SELF_LABEL_STEPS)
        opt, sched = self._optimizer(head.params, steps)
        keep = 1.0 - float(self.view_dropout)
        for epoch in shown_range(passes, "ClusterHead self-labeling", verbose=self.verbose, unit="epoch"):
            with torch.no_grad():
                probs = torch.cat([torch.softmax(head.logits(X[s:s + _PREDICT_BLOCK])[:, 0], 1)
                                   for s in range(0, n, _PREDICT_BLOCK)])
            top, target = probs.max(1)
            confident = torch.nonzero(top > float(self.confidence)).flatten()
            self.n_confident_ = int(confident.numel())
            if self.n_confident_ == 0:
                logger.info("ClusterHead: no point is confident above %.3f; self-labeling skipped", self.confidence)
                return
            counts = torch.bincount(target[confident], minlength=int(self.n_clusters)).float()
            class_weight = torch.where(counts > 0, counts.sum() / counts.clamp_min(1) / (counts > 0).sum(),
                                       torch.zeros_like(counts))
            total = 0.0
            perm = confident[torch.randperm(len(confident), generator=gen).to(X.device)]
            for idx in torch.split(perm, bs):
                xb = X[idx]
                mask = (torch.rand(xb.shape, generator=gen) < keep).to(xb.dtype).to(X.device)
                noise = torch.randn(xb.shape, generator=gen).to(X.device) * float(self.view_noise)
                strong = xb * mask / keep + noise
                loss = F.cross_entropy(head.logits(strong)[:, 0], target[idx], weight=class_weight)
                total += _step(opt, sched, loss) * len(idx)
            logger.debug("ClusterHead self-label epoch %d/%d: %d confident, loss %.4f", epoch + 1,
                         passes, self.n_confident_, total / len(confident))
        logger.info("ClusterHead: self-labeling on %d of %d confident points (%.0f%%)", self.n_confident_, n,
                    100.0 * self.n_confident_ / n)

    # ------------------------------------------------------------------ prediction
    def _check_fitted(self) -> None:
        if not hasattr(self, "_params"):
            raise ValueError("this ClusterHead is not fitted yet; call fit or load first")

    def predict_proba(self, Z: Any) -> np.ndarray:
        """Cluster probabilities (n, n_clusters) of the rows of ``Z`` (L2-normalised here)."""
        self._check_fitted()
        Zn = _normalised_rows(Z)
        d = len(self.input_mean_)
        if Zn.shape[1] != d:
            raise ValueError(f"Z has {Zn.shape[1]} features but the head was fitted on {d}")
        out = np.empty((Zn.shape[0], self._params[-1].shape[0]), np.float32)
        for s in range(0, Zn.shape[0], _PREDICT_BLOCK):
            X = ((Zn[s:s + _PREDICT_BLOCK] - self.input_mean_) * self.input_scale_).astype(np.float64)
            if len(self._params) == 4:
                X = np.maximum(X @ self._params[0].T.astype(np.float64) + self._params[1], 0.0)
            if self.cosine_:
                W = self._params[-2].astype(np.float64)
                X = X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)
                logits = X @ (W / np.maximum(np.linalg.norm(W, axis=1, keepdims=True), 1e-12)).T
            else:
                logits = X @ self._params[-2].T.astype(np.float64) + self._params[-1]
            logits *= self.logit_scale_
            logits -= logits.max(1, keepdims=True)
            e = np.exp(logits)
            out[s:s + _PREDICT_BLOCK] = e / e.sum(1, keepdims=True)
        return out

    def predict(self, Z: Any) -> np.ndarray:
        """Cluster of each row of ``Z`` (the most probable one)."""
        return self.predict_proba(Z).argmax(1).astype(np.int64)

    # ------------------------------------------------------------------ save / load
    def to_arrays(self) -> Tuple[Dict[str, np.ndarray], Dict[str, Any]]:
        """The fitted head as float32 arrays and a JSON-ready config (what :meth:`save` writes)."""
        self._check_fitted()
        arrays = {f"param{i}": np.ascontiguousarray(p, np.float32) for i, p in enumerate(self._params)}
        arrays["input_mean"] = np.ascontiguousarray(self.input_mean_, np.float32)
        params = {k: v for k, v in self.get_params().items() if k != "verbose"}  # display, not the model
        config = {"kind": HEAD_FORMAT, "version": HEAD_VERSION, "params": params,
                  "input_scale": float(self.input_scale_), "n_features": int(self.n_features_in_),
                  "n_params": len(self._params), "cosine": bool(self.cosine_),
                  "logit_scale": float(self.logit_scale_)}
        return arrays, config

    @classmethod
    def from_arrays(cls, arrays: Dict[str, np.ndarray], config: Dict[str, Any], where: str = "head") -> ClusterHead:
        """Rebuilds a fitted head from :meth:`to_arrays` output, checking names and shapes."""
        if not isinstance(config, dict) or config.get("kind") != HEAD_FORMAT or config.get("version") != HEAD_VERSION:
            raise ValueError(f"{where}: not an embedcluster cluster head of version {HEAD_VERSION}")
        params = config.get("params")
        if not isinstance(params, dict) or not all(
                v is None or isinstance(v, (bool, int, float, str)) for v in params.values()):
            raise ValueError(f"{where}: field 'params' should be an object of plain values")
        head = cls()
        head.set_params(**params)
        n_params, d = config.get("n_params"), config.get("n_features")
        scale, logit_scale = config.get("input_scale"), config.get("logit_scale")
        if n_params not in (2, 4) or not isinstance(d, int) or d < 1 or not _positive(scale) \
                or not _positive(logit_scale) or not isinstance(config.get("cosine"), bool):
            raise ValueError(f"{where}: fields n_params, n_features, input_scale, logit_scale or cosine are "
                             "missing or out of range")
        names = {f"param{i}" for i in range(n_params)} | {"input_mean"}
        if set(arrays) != names:
            raise ValueError(f"{where}: holds arrays {sorted(arrays)}, expected {sorted(names)}")
        ps = [np.ascontiguousarray(arrays[f"param{i}"], np.float32) for i in range(n_params)]
        k = int(params.get("n_clusters", -1))
        width = ps[0].shape[0] if n_params == 4 else 0
        shapes = [(width, d), (width,), (k, width), (k,)] if n_params == 4 else [(k, d), (k,)]
        if [p.shape for p in ps] != shapes or arrays["input_mean"].shape != (d,):
            raise ValueError(f"{where}: array shapes {[p.shape for p in ps]} do not match {shapes}")
        if not all(np.isfinite(p).all() for p in ps) or not np.isfinite(arrays["input_mean"]).all():
            raise ValueError(f"{where}: arrays hold NaN or infinity")
        head._params = ps
        head.input_mean_ = np.ascontiguousarray(arrays["input_mean"], np.float32)
        head.input_scale_ = np.float32(scale)
        head.cosine_, head.logit_scale_ = config["cosine"], float(logit_scale)  # type: ignore[arg-type]
        head.n_features_in_ = d
        return head

    def save(self, directory: PathLike) -> Path:
        """Saves the fitted head to ``directory`` (head.safetensors + head.json with sha256
        checksums), atomically, with the same safety rules as
        :meth:`embedcluster.transfer.pipeline.TransferClustering.save`."""
        arrays, config = self.to_arrays()

        def write(snap: Path) -> None:
            save_safetensors(snap / "head.safetensors", arrays, {"format": HEAD_FORMAT})
            save_json(snap / "head.json", {**config, "arrays": {k: sha256_array(v) for k, v in arrays.items()}})

        return save_snapshot(Path(directory), HEAD_FORMAT, write)

    @classmethod
    def load(cls, directory: PathLike) -> ClusterHead:
        """Loads a head written by :meth:`save`, verifying checksums, names and shapes."""
        def read(snap: Path) -> ClusterHead:
            cfg = load_json(snap / "head.json")
            arrays, _ = load_safetensors(snap / "head.safetensors")
            sums = cfg.pop("arrays", None) if isinstance(cfg, dict) else None
            if not isinstance(sums, dict) or set(sums) != set(arrays) or any(
                    sha256_array(a) != sums[k] for k, a in arrays.items()):
                raise ValueError(f"{snap}: the head's arrays do not match their sha256 checksums")
            return cls.from_arrays(arrays, cfg, str(snap / "head.json"))

        return read_snapshot_with(Path(directory), HEAD_FORMAT, read)


def _step(opt: Any, sched: Any, loss: Any) -> float:
    """One optimiser and learning-rate step on ``loss``; returns its value."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    sched.step()
    return float(loss.detach())


def _positive(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0


class _deterministic:
    """torch.use_deterministic_algorithms(True) for the duration, restoring the previous mode."""

    def __enter__(self) -> None:
        import torch

        self.prev = torch.are_deterministic_algorithms_enabled()
        torch.use_deterministic_algorithms(True)

    def __exit__(self, *exc: Any) -> None:
        import torch

        torch.use_deterministic_algorithms(self.prev)
