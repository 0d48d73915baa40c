"""One object for the whole job: embed -> cluster -> probe on pseudo-labels -> predict.

`TransferClustering` holds an encoder reference, a clusterer and a linear probe. It saves as a
directory of safetensors + JSON (never pickle), written atomically: a save that is interrupted
leaves the previous model intact. `export_quantized` writes an int8 copy of the probe and
reports size and accuracy before and after.
"""

from __future__ import annotations

import logging
import math
import os
import re
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, Optional, Union

import numpy as np

from .. import metrics
from .._interface import advice
from .._io import (POINTER_NAME, load_json, load_safetensors, read_snapshot_with, save_json, save_safetensors,
                  save_snapshot, sha256_array, to_numpy)
from .._progress import scope as progress_scope

if TYPE_CHECKING:  # for annotations only: the pipeline imports the encoders package where it uses it
    from ..encoders import Encoder

logger = logging.getLogger("embedcluster")

FORMAT = "embedcluster-pipeline"
# 3: array checksums are _io.sha256_array's ("array|shape|dtype|" and little-endian bytes).
VERSION = 3
PathLike = Union[str, os.PathLike]


def _dataset(data: Any):
    from ..data import Dataset, load

    return data if isinstance(data, Dataset) else load(data)


def _nearest(Z: np.ndarray, centers: np.ndarray):
    """Nearest centre (exact, native engine) and the Euclidean distance to it."""
    from .._backend import _core

    labels, d2 = _core.kmeans_assign(np.ascontiguousarray(centers, np.float32),
                                     np.ascontiguousarray(Z, np.float32), "l2")
    return labels, np.sqrt(np.maximum(d2, 0.0))


def _field(cfg: Dict[str, Any], name: str, where: str, check, rule: str) -> Any:
    if name not in cfg:
        raise ValueError(f"{where}: field {name!r} is missing")
    v = cfg[name]
    try:
        ok = check(v)
    except (TypeError, ValueError, OverflowError):
        ok = False
    if not ok:
        raise ValueError(f"{where}: field {name!r} is {v!r:.80}; it should be {rule}")
    return v


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_real(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _check_config(cfg: Any, where: str) -> Dict[str, Any]:
    """Type- and range-checks a pipeline.json; every message names the field."""
    if not isinstance(cfg, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(cfg).__name__}")
    _field(cfg, "format", where, lambda v: v == FORMAT, repr(FORMAT))
    _field(cfg, "version", where, lambda v: _is_int(v) and v == VERSION, f"{VERSION} (this version of embedcluster)")
    known = {"format", "version", "encoder", "normalize", "unknown_threshold", "unknown_quantile", "n_features",
             "probe", "seed", "arrays", "head"}
    if set(cfg) - known:
        raise ValueError(f"{where}: unknown fields {sorted(set(cfg) - known)}")
    _field(cfg, "normalize", where, lambda v: isinstance(v, bool), "true or false")
    _field(cfg, "unknown_threshold", where, lambda v: _is_real(v) and v >= 0, "a finite number >= 0")
    _field(cfg, "unknown_quantile", where, lambda v: _is_real(v) and 0 < v <= 1, "a number in (0, 1]")
    _field(cfg, "n_features", where, lambda v: _is_int(v) and 1 <= v <= 1 << 24, "an integer in [1, 2^24]")
    _field(cfg, "seed", where, lambda v: _is_int(v) and -(1 << 63) <= v < 1 << 63, "a 64-bit integer")
    _field(cfg, "arrays", where, lambda v: isinstance(v, dict) and all(
        isinstance(k, str) and isinstance(d, str) and len(d) == 64 for k, d in v.items()),
        "an object of array name -> sha256")
    rec = _field(cfg, "encoder", where, lambda v: isinstance(v, dict), "an object")
    ew = where + " encoder"
    kind = _field(rec, "kind", ew, lambda v: v in ("raw", "local", "spec", "external"),
                  "'raw', 'local', 'spec' or 'external'")
    allowed = {"raw": {"kind"}, "local": {"kind", "path", "fingerprint", "name", "options"},
               "spec": {"kind", "spec", "fingerprint", "name", "options"},
               "external": {"kind", "fingerprint", "name"}}[kind]
    if set(rec) - allowed:
        raise ValueError(f"{ew}: unknown fields {sorted(set(rec) - allowed)} for kind {kind!r}")
    if kind != "raw":
        _field(rec, "fingerprint", ew, lambda v: isinstance(v, str) and 0 < len(v) <= 256, "a fingerprint string")
        _field(rec, "name", ew, lambda v: isinstance(v, str) and len(v) <= 4096, "a string")
    if kind == "local":
        # Only the names save() writes: a single entry of the snapshot, never a path out of it.
        _field(rec, "path", ew, lambda v: isinstance(v, str) and re.fullmatch(r"encoder(\.[A-Za-z0-9]{1,15})?", v),
               "'encoder' or 'encoder.<suffix>' (a file or folder inside the pipeline)")
    if "options" in rec:
        _check_encoder_options(rec["options"], ew + " field 'options'")
    if kind == "spec":
        _field(rec, "spec", ew, lambda v: isinstance(v, str) and 0 < len(v) <= 4096 and "\x00" not in v,
               "an encoder name")
    probe = cfg.get("probe", "missing")
    if probe == "missing":
        raise ValueError(f"{where}: field 'probe' is missing")
    if probe is not None:
        pw = where + " probe"
        if not isinstance(probe, dict):
            raise ValueError(f"{pw}: expected an object or null, got {type(probe).__name__}")
        from .probe import PROBE_KIND, PROBE_VERSION, LinearProbe

        _field(probe, "kind", pw, lambda v: v == PROBE_KIND, repr(PROBE_KIND))
        _field(probe, "version", pw, lambda v: _is_int(v) and v == PROBE_VERSION, str(PROBE_VERSION))
        known_probe = {"kind", "version", "classes", "n_features", "params"}
        if set(probe) - known_probe:
            raise ValueError(f"{pw}: unknown fields {sorted(set(probe) - known_probe)}")
        _field(probe, "classes", pw, lambda v: isinstance(v, list) and 1 <= len(v) <= 1 << 24
               and all(_is_int(c) for c in v) and len(set(v)) == len(v), "a list of distinct integers")
        _field(probe, "n_features", pw, lambda v: v == cfg["n_features"], f"{cfg['n_features']} (the pipeline's)")
        _field(probe, "params", pw, lambda v: isinstance(v, dict) and all(
            x is None or isinstance(x, (bool, int, float, str)) for x in v.values()), "an object of plain values")
        unknown = set(probe["params"]) - set(LinearProbe().get_params())
        if unknown:
            raise ValueError(f"{pw}: unknown parameters {sorted(unknown)}")
    return cfg


#: The load_encoder keywords a pipeline records with its encoder (``encoder_options``).
ENCODER_OPTIONS = ("image_size", "invert", "embedding_layer")


def valid_image_size(size: Any) -> bool:
    """An image size load_encoder takes: 'auto', a side >= 1 or a (height, width) pair."""
    return size == "auto" or (_is_int(size) and size >= 1) or (
        isinstance(size, (list, tuple)) and len(size) == 2 and all(_is_int(v) and v >= 1 for v in size))


def valid_layer(layer: Any) -> bool:
    """A layer selection: a non-empty name or a non-empty list of non-empty names."""
    return (isinstance(layer, str) and layer != "") or (
        isinstance(layer, (list, tuple)) and len(layer) > 0 and all(isinstance(v, str) and v for v in layer))


def check_known_keys(settings: Any, known: Any, where: str, what: str, item: str = "") -> None:
    """A dict of settings whose keys are all in `known` (ValueError naming `where`, `what` the
    settings are, e.g. "encoder options", and `item` their keys, default `what`, otherwise);
    the values are the caller's to check."""
    if not isinstance(settings, dict):
        raise ValueError(f"{where}: {what} should be a JSON object (a dict), got {type(settings).__name__}")
    unknown = sorted(set(settings) - set(known))
    if unknown:
        raise ValueError(f"{where}: unknown {item or what} {unknown}; known: {sorted(known)}")


def _check_encoder_options(options: Any, where: str) -> Dict[str, Any]:
    """``encoder_options`` (or the saved copy): known keys with JSON-plain values."""
    check_known_keys(options, ENCODER_OPTIONS, where, "encoder options")
    size = options.get("image_size", "auto")
    if not valid_image_size(size):
        raise ValueError(f"{where}: image_size is {size!r:.80}; it should be 'auto', an integer >= 1 or a "
                         "(height, width) pair")
    if not isinstance(options.get("invert", False), bool):
        raise ValueError(f"{where}: invert is {options['invert']!r:.80}; it should be true or false")
    layer = options.get("embedding_layer", "head")
    if not valid_layer(layer):
        raise ValueError(f"{where}: embedding_layer is {layer!r:.80}; it should be a layer name or a list of "
                         "layer names")
    return {k: list(v) if isinstance(v, tuple) else v for k, v in options.items()}


def _check_arrays(arrays: Dict[str, np.ndarray], cfg: Dict[str, Any], where: str) -> None:
    """Names, checksums, dtypes, shapes and finiteness of a loaded pipeline's arrays."""
    expected = {"centers"} | ({"probe.weight", "probe.bias"} if cfg["probe"] is not None else set())
    if cfg.get("head") is not None:
        head = cfg["head"]
        n_params = head.get("n_params") if isinstance(head, dict) else None
        if n_params not in (2, 4):
            raise ValueError(f"{where}: field 'head' should describe a cluster head with 2 or 4 parameter arrays")
        expected |= {"head.input_mean"} | {f"head.param{i}" for i in range(n_params)}
    if set(arrays) != expected or set(cfg["arrays"]) != expected:
        raise ValueError(f"{where}: holds arrays {sorted(arrays)}, its config lists {sorted(cfg['arrays'])}; "
                         f"expected {sorted(expected)}")
    for name, a in arrays.items():
        if sha256_array(a) != cfg["arrays"][name]:
            raise ValueError(f"{where}: array {name!r} does not match its sha256 checksum; the file was "
                             "altered or damaged")
        if a.dtype != np.float32 or not np.isfinite(a).all():
            raise ValueError(f"{where}: array {name!r} should be finite float32, got {a.dtype}"
                             + ("" if a.dtype != np.float32 else " with NaN or infinity"))
    d = cfg["n_features"]
    c = arrays["centers"]
    if c.ndim != 2 or c.shape[0] < 1 or c.shape[1] != d:
        raise ValueError(f"{where}: centers have shape {c.shape}, expected (n_clusters >= 1, {d})")
    if cfg["probe"] is not None:
        k = len(cfg["probe"]["classes"])
        if arrays["probe.weight"].shape != (k, d) or arrays["probe.bias"].shape != (k,):
            raise ValueError(f"{where}: probe weight {arrays['probe.weight'].shape} / bias "
                             f"{arrays['probe.bias'].shape} do not match {k} classes and {d} features")


class TransferClustering:
    """Embed with a pretrained encoder, cluster, train a linear probe on the pseudo-labels.

    Parameters
    ----------
    encoder : encoder spec, :class:`embedcluster.encoders.Encoder`, ``torch.nn.Module``,
        callable, or None for raw features (flattened pixels / vectors); see
        :func:`embedcluster.encoders.load_encoder`.
    clusterer : an embedcluster estimator with ``fit`` and ``labels_`` (default:
        ``KMeans(n_clusters, n_init=10)``). DBSCAN works too: its noise is left out of the probe.
        ``"scan"`` or ``"temi"``: a :class:`embedcluster.ClusterHead` of that method with
        ``n_clusters`` clusters and ``seed``; a fitted ClusterHead is saved with the pipeline
        and ``predict`` uses it when there is no probe. ``"umap"``: a
        :class:`embedcluster.transfer.manifold.UMAPClustering` (exact kNN graph, UMAP, k-means;
        needs umap-learn) with ``n_clusters`` and ``seed``; new points are predicted by the
        probe or the nearest centre (the mean embedding of each cluster), not by UMAP.
    probe : train the linear probe (True) or predict by the nearest centre only (False).
    n_clusters : clusters of the default k-means.
    normalize : L2-normalise embeddings before clustering (cosine geometry).
    probe_rounds, confident_fraction, probe_weighting, probe_epochs :
        self-labeling (:func:`embedcluster.probe.self_label`). The default weighting "margin"
        trains on every point weighted by its distance margin, so the probe still sees each
        cluster's boundary; keeping only the most confident half ("select") trains on a biased
        sample of the k-means decision and tends to reinforce its errors.
    unknown_quantile : new points farther from every centre than this quantile of the training
        points' distances are flagged unknown (label -1) by ``predict(..., flag_unknown=True)``.
    batch_size, cache_dir : passed to the encoder (rows per forward pass, embedding cache).
    progress : show the progress of ``fit``, ``predict`` and ``evaluate`` (embedding, the
        clusterer, the probe): a bar in a terminal, else a log line every ~10 s or tenth of the
        work (see ``embedcluster._progress``). Estimators inside (the default k-means, a
        ``clusterer`` whose ``verbose`` is None) follow it; an explicit ``verbose`` of theirs wins.
    verbose : the same switch under the name the estimators use (0 / False: silent, 1 / True:
        shown); None (default) leaves it to ``progress``.
    seed : seeds the clusterer and the probe.
    device : where the encoder runs: None or ``"auto"`` (a CUDA GPU when torch sees one, else the
        CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``; a GPU the installed torch cannot use raises
        ValueError saying why. Not saved with the pipeline (``load`` takes its own ``device``).
    encoder_options : keywords for :func:`embedcluster.encoders.load_encoder` when ``encoder``
        is a name or path: ``image_size``, ``invert``, ``embedding_layer`` (e.g.
        ``{"image_size": 32, "embedding_layer": ["block6", "block7"]}`` for
        ``"efficientnet-lite0"``). They are saved with the pipeline, so that ``load`` rebuilds
        the same encoder.

    Attributes (after fit)
    ----------------------
    embeddings_, labels_ (cluster of each training point), centers_, probe_ (or None),
    unknown_threshold_, n_features_in_ (embedding dimension), clusterer_ (the fitted clusterer),
    head_clusters_ (the outputs of a clustering head that some point took, in cluster order),
    fit_seconds_ ({"cluster": seconds of the clustering, "probe": seconds of the probe's
    training, 0.0 without a probe}; embedding is not included).
    """

    def __init__(self, encoder: Any = None, clusterer: Any = None, probe: bool = True, *,
                 n_clusters: int = 8, normalize: bool = True, probe_rounds: int = 1,
                 confident_fraction: float = 0.5, probe_weighting: str = "margin", probe_epochs: int = 100,
                 unknown_quantile: float = 0.99, batch_size: int = 256, cache_dir: Optional[PathLike] = None,
                 progress: bool = True, seed: int = 0, encoder_options: Optional[Dict[str, Any]] = None,
                 device: Optional[str] = None, verbose: Any = None):
        if not 0.0 < unknown_quantile <= 1.0:
            raise ValueError(f"unknown_quantile={unknown_quantile} should be in (0, 1]")
        if encoder_options:
            if not isinstance(encoder, (str, os.PathLike)):
                raise ValueError("encoder_options apply to an encoder given by name or path; set them on the "
                                 f"{type(encoder).__name__} itself instead")
            encoder_options = _check_encoder_options(encoder_options, "encoder_options")
        self.encoder_options = encoder_options or None
        self.encoder = encoder
        self.clusterer = clusterer
        self.probe = probe
        self.n_clusters = n_clusters
        self.normalize = normalize
        self.probe_rounds = probe_rounds
        self.confident_fraction = confident_fraction
        self.probe_weighting = probe_weighting
        self.probe_epochs = probe_epochs
        self.unknown_quantile = unknown_quantile
        self.batch_size = batch_size
        self.cache_dir = cache_dir
        self.progress = progress
        self.verbose = verbose
        self.seed = seed
        if device is not None:
            from ..encoders import resolve_device

            resolve_device(device)  # a GPU torch cannot use is refused here, not at the first batch
        self.device = device
        self._encoder_obj: Optional[Encoder] = None
        self.encoder_spec_: Optional[Dict[str, Any]] = None

    # ------------------------------------------------------------------ embedding
    def _get_encoder(self):
        if self.encoder is None:
            return None
        if self._encoder_obj is None:
            from ..encoders import Encoder, load_encoder

            kw = dict(self.encoder_options or {})
            if self.device is not None:
                if isinstance(self.encoder, Encoder):
                    raise ValueError("device= applies to an encoder given by name, path or module; this Encoder "
                                     f"already runs on {self.encoder.device!r} (set Encoder(..., device=) instead)")
                kw["device"] = self.device
            self._encoder_obj = load_encoder(self.encoder, **kw)
        return self._encoder_obj

    def embed(self, data: Any) -> np.ndarray:
        """Embeddings of ``data`` (any source :func:`embedcluster.data.load` accepts), float32."""
        enc = self._get_encoder()
        if enc is None:
            from ..data import as_feature_matrix

            ds = _dataset(data)
            if ds.kind == "texts":
                raise ValueError(advice("text data needs an encoder (e.g. encoder='all-MiniLM-L6-v2')",
                                        "text data needs an encoder: add --encoder all-MiniLM-L6-v2"))
            return self._given(as_feature_matrix(ds))
        src = data if isinstance(data, (list, np.ndarray)) else _dataset(data)
        return enc.encode(src, batch_size=self.batch_size, normalize=self.normalize, progress=self._shows_progress(),
                          cache_dir=self.cache_dir)

    def _shows_progress(self) -> bool:
        return bool(self.progress if self.verbose is None else self.verbose)

    def _given(self, Z: np.ndarray) -> np.ndarray:
        """Precomputed embeddings, treated exactly like embed()'s output (normalised when asked)."""
        Z = np.ascontiguousarray(Z, np.float32)
        if self.normalize:
            n = np.linalg.norm(Z, axis=1, keepdims=True)
            Z = np.ascontiguousarray(Z / np.where(n > 0, n, 1.0), np.float32)
        return Z

    # ------------------------------------------------------------------ fit / predict
    def fit(self, data: Any, Z: Optional[np.ndarray] = None) -> TransferClustering:
        """Embeds ``data`` (or takes precomputed embeddings ``Z``, normalised like embed()'s output
        when ``normalize`` is set), clusters, trains the probe."""
        with progress_scope(self._shows_progress()):
            return self._fit(data, Z)

    def _fit(self, data: Any, Z: Optional[np.ndarray]) -> TransferClustering:
        from ..cluster import KMeans
        from .probe import self_label

        Z = self.embed(data) if Z is None else self._given(Z)
        clusterer = self._make_clusterer(KMeans)
        started = time.perf_counter()
        labels = np.asarray(clusterer.fit(Z).labels_)
        self.clusterer_ = clusterer
        ids = np.unique(labels[labels >= 0])
        if len(ids) == 0:
            raise ValueError("the clusterer found no cluster (all points are noise); "
                             + advice("loosen its parameters (DBSCAN: a larger eps or a smaller min_samples)",
                                      "with --algorithm dbscan raise --eps or lower --min-samples"))
        self.head_clusters_ = ids.astype(np.int64)  # the head's outputs in use (for a ClusterHead)
        # Centres: the estimator's own, else the mean of each cluster's points (DBSCAN, heads).
        centers = getattr(clusterer, "cluster_centers_", None)
        if centers is None:
            remap = {int(c): i for i, c in enumerate(ids)}
            labels = np.array([remap.get(int(v), -1) for v in labels])
            centers = np.stack([Z[labels == i].mean(0) for i in range(len(ids))])
        centers = np.ascontiguousarray(centers, np.float32)
        self.embeddings_, self.labels_, self.centers_ = Z, labels.astype(np.int64), centers
        self.n_features_in_ = Z.shape[1]
        _, dist = _nearest(Z, centers)
        self.unknown_threshold_ = float(np.quantile(dist[labels >= 0], self.unknown_quantile))
        self.probe_ = None
        self.fit_seconds_ = {"cluster": time.perf_counter() - started, "probe": 0.0}
        if self.probe:
            started = time.perf_counter()
            self.probe_, _ = self_label(Z, self.labels_, centers, n_rounds=self.probe_rounds,
                                        fraction=self.confident_fraction, weighting=self.probe_weighting,
                                        epochs=self.probe_epochs, seed=self.seed)
            self.fit_seconds_["probe"] = time.perf_counter() - started
        return self

    def _make_clusterer(self, kmeans: Any) -> Any:
        """The clusterer to fit: the one given, a ClusterHead for "scan" / "temi", else k-means."""
        from .heads import METHODS, ClusterHead

        if self.clusterer is None:
            return kmeans(self.n_clusters, n_init=10, random_state=self.seed)
        if isinstance(self.clusterer, str):
            if self.clusterer == "umap":
                from .manifold import UMAPClustering

                return UMAPClustering(self.n_clusters, random_state=self.seed)
            if self.clusterer not in METHODS:
                raise ValueError(f"clusterer={self.clusterer!r}: a name should be one of {(*METHODS, 'umap')} "
                                 "(clustering heads, UMAP + k-means); pass an estimator object for anything else")
            return ClusterHead(self.n_clusters, self.clusterer, random_state=self.seed)
        return self.clusterer

    def _head(self) -> Any:
        """The fitted clustering head, when the clusterer is one."""
        from .heads import ClusterHead

        fitted = getattr(self, "clusterer_", None)
        return fitted if isinstance(fitted, ClusterHead) and hasattr(fitted, "_params") else None

    def _check_fitted(self) -> None:
        if not hasattr(self, "centers_"):
            raise ValueError("this TransferClustering is not fitted yet; call fit or load first")

    def predict(self, data: Any = None, *, Z: Optional[np.ndarray] = None, flag_unknown: bool = False) -> np.ndarray:
        """Cluster of new points: the probe's prediction (or the nearest centre without a probe).

        With ``flag_unknown``, points farther from every centre than ``unknown_threshold_``
        (the ``unknown_quantile`` of the training points' distances) get -1.
        """
        self._check_fitted()
        Z = self.embed(data) if Z is None else self._given(Z)
        if Z.shape[1] != self.n_features_in_:
            raise ValueError(f"embeddings have {Z.shape[1]} features but the pipeline was fitted on "
                             f"{self.n_features_in_}")
        near, dist = _nearest(Z, self.centers_)
        head = self._head()
        if self.probe_ is not None:
            pred = self.probe_.predict(Z).astype(np.int64)
        elif head is not None:
            pred = self._head_clusters(head.predict(Z))
        else:
            pred = near.astype(np.int64)
        if flag_unknown:
            pred = np.where(dist > self.unknown_threshold_, -1, pred)
        return pred

    def evaluate(self, data: Any = None, y: Any = None, *, Z: Optional[np.ndarray] = None) -> Dict[str, Any]:
        """Metrics against true labels: of the nearest-centre clusters and of the probe.

        Without ``data``/``Z`` the training points are scored (``y`` must then be theirs).
        """
        self._check_fitted()
        if data is None and Z is None:
            Z, clusters = self.embeddings_, self.labels_
        else:
            if y is None:
                y = getattr(_dataset(data), "y", None) if data is not None else None
            Z = self.embed(data) if Z is None else self._given(Z)
            clusters, _ = _nearest(Z, self.centers_)
        if y is None:
            raise ValueError("evaluate needs true labels: pass y= or a dataset that has labels")
        out = {"clusters": metrics.clustering_report(y, clusters)}
        if self.probe_ is not None:
            out["probe"] = metrics.clustering_report(y, self.probe_.predict(Z))
        return out

    def _head_clusters(self, head_labels: np.ndarray) -> np.ndarray:
        """The head's outputs in the pipeline's cluster numbering (the head's clusters in use,
        renumbered 0.. in order); an output no training point took maps to -1."""
        remap = np.full(int(self.clusterer_.n_clusters), -1, np.int64)
        remap[self.head_clusters_] = np.arange(len(self.head_clusters_))
        return remap[head_labels]

    # ------------------------------------------------------------------ save / load
    def _encoder_record(self, root: Path) -> Dict[str, Any]:
        """Describes the encoder and, when it lives in files, copies it into the snapshot
        ``root`` so that the saved pipeline is self-contained and covered by its checksums."""
        from ..encoders import save_checkpoint

        enc = self._get_encoder()
        if enc is None:
            return {"kind": "raw"}
        rec: Dict[str, Any] = {"fingerprint": enc.fingerprint, "name": enc.name}
        model = getattr(enc, "model", None)
        spec = self.encoder if isinstance(self.encoder, (str, os.PathLike)) else None
        if spec is not None and Path(spec).expanduser().exists():
            src = Path(spec).expanduser()
            if src.is_dir():
                shutil.copytree(src, root / "encoder", symlinks=False)
                rec.update(kind="local", path="encoder")
            else:
                name = "encoder" + "".join(c for c in src.suffix if c.isalnum() or c == ".")[:16]
                shutil.copyfile(src, root / name)
                rec.update(kind="local", path=name)
        elif (model is not None and hasattr(model, "config")
              and type(model).__module__.startswith("embedcluster.models")):
            save_checkpoint(model, root / "encoder", model.config)
            rec.update(kind="local", path="encoder")
        elif spec is not None:
            rec.update(kind="spec", spec=str(spec))
        else:
            rec.update(kind="external")
        if self.encoder_options and rec["kind"] in ("local", "spec"):
            rec["options"] = dict(self.encoder_options)
        return rec

    def save(self, directory: PathLike) -> Path:
        """Saves to ``directory`` (safetensors + JSON with sha256 checksums), atomically.

        ``directory`` must not exist, be empty, or hold a pipeline saved earlier by
        embedcluster (it carries a marker file); anything else is refused with
        :class:`embedcluster._io.UnsafePathError` and left untouched. Readers see the previous
        save or this one whole, and a crash at any point leaves the previous one loadable; see
        :func:`embedcluster._io.save_snapshot` for the layout.
        """
        self._check_fitted()
        final = Path(directory)

        def write(snap: Path) -> None:
            arrays = {"centers": self.centers_}
            probe_cfg = None
            if self.probe_ is not None:
                pa, probe_cfg = self.probe_.to_arrays()
                arrays.update({f"probe.{k}": v for k, v in pa.items()})
            head_cfg = None
            if self._head() is not None:
                ha, head_cfg = self._head().to_arrays()
                head_cfg["clusters"] = [int(c) for c in self.head_clusters_]
                arrays.update({f"head.{k}": v for k, v in ha.items()})
            arrays = {k: np.ascontiguousarray(v, np.float32) for k, v in arrays.items()}
            save_safetensors(snap / "arrays.safetensors", arrays, {"format": FORMAT})
            cfg = {"format": FORMAT, "version": VERSION, "encoder": self._encoder_record(snap),
                   "normalize": bool(self.normalize), "unknown_threshold": float(self.unknown_threshold_),
                   "unknown_quantile": float(self.unknown_quantile), "n_features": int(self.n_features_in_),
                   "probe": probe_cfg, "seed": int(self.seed), "head": head_cfg,
                   "arrays": {k: sha256_array(v) for k, v in arrays.items()}}
            save_json(snap / "pipeline.json", cfg)

        save_snapshot(final, FORMAT, write)
        return final

    @classmethod
    def load(cls, directory: PathLike, encoder: Any = None, *, device: Optional[str] = None) -> TransferClustering:
        """Loads a saved pipeline, verifying it first.

        Every file's sha256, every array's sha256, every config field (type and range) and the
        encoder's fingerprint are checked; a damaged or altered pipeline raises ValueError
        naming the file or field. ``encoder`` is needed only when it was an in-memory model or
        callable (kind "external"); its fingerprint must match the saved one. ``device``: where
        an encoder loaded by name or from the pipeline's files runs (see the class's ``device``).
        """
        root = Path(directory)
        if root.is_dir() and not (root / POINTER_NAME).exists() and (root / "pipeline.json").is_file():
            raise ValueError(f"{root} was saved by an older embedcluster (pipeline format 1, without "
                             "checksums); fit it again and save it with this version")
        return read_snapshot_with(root, FORMAT, lambda snap: cls._from_snapshot(root, snap, encoder, device))

    @classmethod
    def _from_snapshot(cls, root: Path, snap: Path, encoder: Any, device: Optional[str] = None) -> TransferClustering:
        """Builds the pipeline from a verified snapshot folder (see :meth:`load`)."""
        from ..encoders import Encoder, load_encoder
        from .probe import LinearProbe

        where = f"{snap / 'pipeline.json'}"
        cfg = _check_config(load_json(snap / "pipeline.json"), where)
        arrays, _ = load_safetensors(snap / "arrays.safetensors")
        _check_arrays(arrays, cfg, f"{snap / 'arrays.safetensors'}")
        rec = cfg["encoder"]
        kind = rec["kind"]
        options = rec.get("options", {})
        at = {} if device is None else {"device": device}
        if kind == "raw":
            enc = None
        elif kind == "local":
            enc = load_encoder(snap / rec["path"], **options, **at)
        elif kind == "spec":
            enc = load_encoder(encoder, **({} if isinstance(encoder, Encoder) else {**options, **at})) \
                if encoder is not None else load_encoder(rec["spec"], **options, **at)
        elif encoder is None:  # external
            raise ValueError(f"the pipeline in {root} used an in-memory encoder ({rec['name']}); "
                             + advice("pass it again: TransferClustering.load(path, encoder=...)",
                                      "the command line cannot rebuild it: load the pipeline in Python with "
                                      "TransferClustering.load(path, encoder=...)"))
        else:
            enc = load_encoder(encoder)
        if kind in ("spec", "external") and enc is not None and enc.fingerprint != rec["fingerprint"]:
            raise ValueError(f"the encoder {rec.get('spec', rec['name'])!r} differs from the one the pipeline "
                             f"in {root} was fitted with (fingerprints do not match); pass the same encoder")
        self = cls(encoder=enc, normalize=cfg["normalize"], unknown_quantile=cfg["unknown_quantile"], seed=cfg["seed"],
                   device=device)
        self._encoder_obj = enc
        self.encoder_options = dict(options) or None
        self.centers_ = np.ascontiguousarray(arrays["centers"], np.float32)
        self.n_features_in_ = cfg["n_features"]
        self.unknown_threshold_ = cfg["unknown_threshold"]
        self.probe_ = None
        if cfg["probe"] is not None:
            self.probe_ = LinearProbe.from_arrays({"weight": arrays["probe.weight"], "bias": arrays["probe.bias"]},
                                                  cfg["probe"])
        if cfg.get("head") is not None:
            self._load_head(cfg["head"], arrays, where)
        return self

    def _load_head(self, head_cfg: Dict[str, Any], arrays: Dict[str, np.ndarray], where: str) -> None:
        """Restores the clustering head saved with the pipeline (checked like the rest)."""
        from .heads import ClusterHead

        head_cfg = dict(head_cfg)
        clusters = head_cfg.pop("clusters", None)
        head = ClusterHead.from_arrays({k[len("head."):]: v for k, v in arrays.items() if k.startswith("head.")},
                                       head_cfg, where + " head")
        k = int(head.n_clusters)
        if not isinstance(clusters, list) or not all(_is_int(c) and 0 <= c < k for c in clusters) \
                or len(set(clusters)) != len(clusters) or len(clusters) != self.centers_.shape[0]:
            raise ValueError(f"{where} head: field 'clusters' should list {self.centers_.shape[0]} distinct "
                             f"outputs of the head in [0, {k})")
        self.clusterer = self.clusterer_ = head
        self.head_clusters_ = np.asarray(clusters, np.int64)

    # ------------------------------------------------------------------ deployment
    def export_quantized(self, directory: PathLike, data: Any = None, y: Any = None, *,
                         Z: Optional[np.ndarray] = None) -> Dict[str, Any]:
        """Writes an int8 copy of the probe and reports size and accuracy before and after.

        Weights are quantised per output row (symmetric, scale = max|w| / 127); at prediction
        activations are quantised per row in the same way (dynamic quantisation) and the
        product is accumulated in int32. When the encoder is a PyTorch module with linear
        layers (not TorchScript), those are quantised too with PyTorch's int8 dynamic
        quantisation and saved as ``encoder_int8.safetensors`` (int8 weights + scales, other
        parameters in float32), loadable with :func:`load_int8_encoder`; the report then also
        gives the encoder's size and the end-to-end accuracy with both parts in int8.
        Convolutions stay float32 (dynamic quantisation covers linear layers only). Evaluation
        data (``data``/``Z`` and ``y``) is optional; ``Z`` skips the encoder comparison.
        """
        self._check_fitted()
        if self.probe_ is None:
            raise ValueError("there is no probe to quantise (the pipeline was fitted with probe=False)")
        W = self.probe_.coef_.astype(np.float32)
        b = self.probe_.intercept_.astype(np.float32)
        wscale = np.maximum(np.abs(W).max(1), 1e-30) / 127.0
        Wq = np.clip(np.rint(W / wscale[:, None]), -127, 127).astype(np.int8)
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        save_safetensors(out / "probe_int8.safetensors",
                         {"weight_int8": Wq, "weight_scale": wscale.astype(np.float32), "bias": b},
                         {"format": "embedcluster-int8-probe", "classes": self.probe_.classes_.tolist()})
        report: Dict[str, Any] = {"fp32_bytes": int(W.nbytes + b.nbytes),
                                  "int8_bytes": int(Wq.nbytes + wscale.nbytes + b.nbytes)}
        if data is not None or Z is not None:
            Zq = self.embed(data) if Z is None else self._given(Z)
            before = self.probe_.predict(Zq)
            after = self.probe_.classes_[np.argmax(int8_logits(Zq, Wq, wscale, b), axis=1)]
            report["agreement"] = float((before == after).mean())
            if y is None and data is not None:
                y = getattr(_dataset(data), "y", None)
            if y is not None:
                report["accuracy_fp32"] = metrics.cluster_accuracy(y, before)
                report["accuracy_int8"] = metrics.cluster_accuracy(y, after)
        enc = self._get_encoder()
        if enc is not None and enc.kind == "module" and _has_linear(enc.model):
            qmodel, info = _quantize_module(enc.model, out / "encoder_int8.safetensors")
            report["encoder"] = info
            if data is not None and y is not None:
                from ..encoders import Encoder

                qenc = Encoder(qmodel, preprocess=enc.preprocess, device="cpu", name=enc.name + "-int8",
                               embedding_layer=enc.embedding_layer)
                src = data if isinstance(data, (list, np.ndarray)) else _dataset(data)
                Zi = qenc.encode(src, batch_size=self.batch_size, normalize=self.normalize, progress=False)
                Zf = self.embed(data)
                cos = (Zi * Zf).sum(1) / np.maximum(np.linalg.norm(Zi, axis=1) * np.linalg.norm(Zf, axis=1), 1e-30)
                info["embedding_cosine_mean"] = float(cos.mean())
                both = self.probe_.classes_[np.argmax(int8_logits(Zi, Wq, wscale, b), axis=1)]
                report["accuracy_int8_encoder_and_probe"] = metrics.cluster_accuracy(y, both)
        save_json(out / "quantization.json", report)
        return report


def _quantize_dynamic(model: Any) -> Any:
    """PyTorch's int8 dynamic quantisation of the linear layers. torch.ao.quantization is
    deprecated in favour of the separate torchao package, which is not a dependency here; the
    deprecation warning is silenced because the function still does what is needed."""
    import warnings

    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        warnings.filterwarnings("ignore", message=".*deprecated.*", category=UserWarning)
        return torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)


def _has_linear(model: Any) -> bool:
    import torch

    return not isinstance(model, torch.jit.ScriptModule) and any(
        isinstance(m, torch.nn.Linear) for m in model.modules())


def _quantize_module(model: Any, path: Path):
    """int8 dynamic quantisation of the linear layers of ``model``; saves it, returns (module, sizes)."""
    import copy

    import torch

    float_model = copy.deepcopy(model).cpu().eval()
    qmodel = _quantize_dynamic(copy.deepcopy(float_model))
    tensors: Dict[str, np.ndarray] = {}
    linear_names = []
    for name, mod in qmodel.named_modules():
        if isinstance(mod, torch.ao.nn.quantized.dynamic.Linear):
            w, bias = mod._weight_bias()
            linear_names.append(name)
            tensors[f"{name}.weight_int8"] = w.int_repr().numpy()
            tensors[f"{name}.weight_scale"] = np.array([w.q_scale()], np.float32)
            tensors[f"{name}.weight_zero_point"] = np.array([w.q_zero_point()], np.int64)
            if bias is not None:
                tensors[f"{name}.bias"] = to_numpy(bias).astype(np.float32)
    quantized_params = {f"{n}.{p}" for n in linear_names for p in ("weight", "bias")}
    for key, val in float_model.state_dict().items():
        if key not in quantized_params:
            tensors[f"float.{key}"] = to_numpy(val)
    config = getattr(model, "config", None) or getattr(getattr(model, "encoder", None), "config", None)
    layer = getattr(model, "layer", None)  # embedcluster.models.LayerSelect
    save_safetensors(path, tensors, {"format": "embedcluster-int8-encoder", "linear": linear_names,
                                     "model_config": config, "layer": layer})
    fp32 = sum(v.numel() * v.element_size() for v in float_model.state_dict().values())
    int8 = sum(int(np.asarray(v).nbytes) for v in tensors.values())
    return qmodel, {"fp32_bytes": int(fp32), "int8_bytes": int(int8), "quantized_linear_layers": len(linear_names)}


def load_int8_encoder(path: PathLike):
    """Rebuilds the int8 encoder written by :meth:`TransferClustering.export_quantized`.

    Only encoders built by :mod:`embedcluster.models` can be rebuilt (their config is saved);
    the result is a ``torch.nn.Module`` with int8 dynamic linear layers.
    """
    import torch

    from .models import model_from_config, with_layer

    tensors, meta = load_safetensors(path)
    if meta.get("format") != "embedcluster-int8-encoder":
        raise ValueError(f"{path} is not an embedcluster int8 encoder")
    if not meta.get("model_config"):
        raise ValueError(f"{path} holds an encoder that embedcluster did not build; rebuild the float module "
                         "yourself and quantise it with torch.ao.quantization.quantize_dynamic")
    model = model_from_config(meta["model_config"])
    if meta.get("layer"):
        model = with_layer(model, meta["layer"])
    floats = {k[len("float."):]: torch.from_numpy(np.array(v)) for k, v in tensors.items() if k.startswith("float.")}
    res = model.load_state_dict(floats, strict=False)
    linear_keys = {f"{n}.{p}" for n in meta["linear"] for p in ("weight", "bias")}
    if res.unexpected_keys or set(res.missing_keys) - linear_keys:
        missing = sorted(set(res.missing_keys) - linear_keys)
        raise ValueError(f"{path} does not match its model config (missing {missing}, "
                         f"unexpected {sorted(res.unexpected_keys)})")
    model.eval()
    qmodel = _quantize_dynamic(model)
    mods = dict(qmodel.named_modules())
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*deprecated.*", category=UserWarning)
        _set_int8_weights(mods, meta["linear"], tensors, path)
    return qmodel


def _set_int8_weights(mods: Dict[str, Any], names: Any, tensors: Dict[str, np.ndarray], path: Any) -> None:
    import torch

    for name in names:
        mod = mods.get(name)
        if mod is None:
            raise ValueError(f"{path}: layer {name!r} is not in the rebuilt model")
        q = torch._make_per_tensor_quantized_tensor(
            torch.from_numpy(np.array(tensors[f"{name}.weight_int8"])), float(tensors[f"{name}.weight_scale"][0]),
            int(tensors[f"{name}.weight_zero_point"][0]))
        bias = tensors.get(f"{name}.bias")
        mod.set_weight_bias(q, None if bias is None else torch.from_numpy(np.array(bias)))


def int8_logits(Z: np.ndarray, Wq: np.ndarray, wscale: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """Logits of an int8 probe: rows of Z quantised to int8 per row, int32 accumulation."""
    zscale = np.maximum(np.abs(Z).max(1), 1e-30) / 127.0
    Zq = np.clip(np.rint(Z / zscale[:, None]), -127, 127).astype(np.int32)
    acc = Zq @ Wq.astype(np.int32).T
    return acc.astype(np.float32) * zscale[:, None].astype(np.float32) * wscale[None, :].astype(np.float32) + bias
