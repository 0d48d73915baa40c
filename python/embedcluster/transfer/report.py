"""A self-contained HTML report of a clustering: metrics, plots and samples per cluster.

`write_report` writes, into one folder, ``report.html`` (every image embedded as base64, so it
opens in a browser from disk with no server), ``metrics.json`` and the PNGs it shows: confusion
matrix (when true labels exist), cluster sizes, a 2-D map of the embeddings (UMAP when
umap-learn is installed, else PCA) coloured by cluster and, when true labels exist, by true class
beside it, and sample images (image data) or sample texts with top terms (text data) per cluster.
"""

from __future__ import annotations

import base64
import html
import io
import logging
import re
import warnings
from collections import Counter
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from .._io import atomic_write_bytes, dumps
from .._progress import Progress
from ..metrics.internal import _distances

logger = logging.getLogger("embedcluster")

_STOP = set("""a an and are as at be but by for from has have he her his i in is it its of on or
about after again also across over under very more most some such only own same other each

our she that the their them they this to was we were will with you your not no so if than then
there these those what when which who why how all any can do does did just into out up down
""".split())


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    _plt().close(fig)
    return buf.getvalue()


_MAX_CONFUSION_SIDE = 200


def _confusion_png(labels_true: np.ndarray, labels_pred: np.ndarray, class_names: Optional[Sequence[str]]) -> bytes:
    from .. import metrics

    mat, classes, clusters = metrics.confusion_matrix(labels_true, labels_pred)
    match = metrics.match_clusters(labels_true, labels_pred)
    # Columns in matched order so a good clustering shows a bright diagonal.
    cluster_ids = clusters.tolist()
    order = sorted(range(len(clusters)), key=lambda j: (
        list(classes).index(match[cluster_ids[j]]) if match.get(cluster_ids[j], -1) in list(classes) else len(classes),
        cluster_ids[j]))
    mat = mat[:, order]
    plt = _plt()
    fig, ax = plt.subplots(figsize=(1.0 + 0.45 * len(order), 1.0 + 0.4 * len(classes)))
    im = ax.imshow(mat, cmap="Blues")
    ax.set_xticks(range(len(order)), [str(clusters[j]) for j in order], rotation=90)
    names = [_class_name(c, class_names) for c in classes]
    ax.set_yticks(range(len(classes)), names)
    ax.set_xlabel("cluster (matched order)")
    ax.set_ylabel("true class")
    if mat.size <= 400:
        for i in range(mat.shape[0]):
            for j in range(mat.shape[1]):
                if mat[i, j]:
                    ax.text(j, i, str(mat[i, j]), ha="center", va="center", fontsize=7,
                            color="white" if mat[i, j] > mat.max() / 2 else "black")
    fig.colorbar(im, ax=ax, fraction=0.04)
    ax.set_title("Confusion matrix")
    return _png(fig)


def _sizes_png(labels_pred: np.ndarray) -> bytes:
    ids, counts = np.unique(labels_pred, return_counts=True)
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(4.0, 0.3 * len(ids)), 3.0))
    ax.bar([str(i) for i in ids], counts, color=["#bbbbbb" if i == -1 else "#4c72b0" for i in ids])
    ax.set_xlabel("cluster (-1: noise)" if (ids == -1).any() else "cluster")
    ax.set_ylabel("points")
    ax.set_title("Cluster sizes")
    ax.tick_params(axis="x", rotation=90)
    return _png(fig)


def project_2d(Z: np.ndarray, max_points: int = 5000, seed: int = 0):
    """PCA to two dimensions (numpy SVD) on at most `max_points` rows; returns (coords, rows)."""
    Z = np.asarray(Z, dtype=np.float64).reshape(len(Z), -1)
    rows = _map_rows(len(Z), max_points, seed)
    S = Z[rows] - Z[rows].mean(0)
    _, _, vt = np.linalg.svd(S, full_matrices=False)
    return S @ vt[:2].T if vt.shape[0] >= 2 else np.c_[S @ vt[:1].T, np.zeros(len(S))], rows


def _map_rows(n: int, max_points: int, seed: int) -> np.ndarray:
    """The rows a map shows: all, or a fixed random `max_points` of them in order."""
    if n <= max_points:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, max_points, replace=False))


#: The map's projections: "auto" is UMAP when umap-learn is installed, else PCA.
MAP_METHODS = ("auto", "umap", "pca")


def map_2d(Z: np.ndarray, method: str = "auto", max_points: int = 5000, seed: int = 0):
    """The 2-D map of the embeddings: (coords, rows, method used, axis names).

    ``method``: "umap" (umap-learn, cosine neighbours or Euclidean when a row is zero, seeded),
    "pca" (:func:`project_2d`) or "auto" (UMAP when umap-learn is installed, else PCA). At most
    `max_points` rows (a fixed random sample) are mapped."""
    import importlib.util

    if method not in MAP_METHODS:
        raise ValueError(f"map_method={method!r} should be one of {MAP_METHODS}")
    if method == "auto":
        method = "umap" if importlib.util.find_spec("umap") is not None else "pca"
    Z = np.asarray(Z, dtype=np.float64).reshape(len(Z), -1)
    if method == "pca" or len(Z) < 16:  # UMAP needs more points than its neighbourhood
        xy, rows = project_2d(Z, max_points, seed)
        return xy, rows, "pca", ("PC 1", "PC 2")
    try:
        with warnings.catch_warnings():  # umap-learn warns on import that TensorFlow (ParametricUMAP) is absent
            warnings.simplefilter("ignore", ImportWarning)
            import umap
    except ImportError as e:
        raise ImportError("map_method='umap' needs umap-learn (pip install umap-learn, or pip install "
                          "'embedcluster[umap]'); map_method='pca' does without it") from e
    rows = _map_rows(len(Z), max_points, seed)
    logger.info("report: UMAP map of %d points", len(rows))
    # Cosine neighbours, as the clusterings of embeddings use; a zero row has no direction, so
    # data with one (a blank image's pixels) is mapped by Euclidean neighbours.
    metric = "cosine" if (np.linalg.norm(Z[rows], axis=1) > 0).all() else "euclidean"
    reducer = umap.UMAP(n_components=2, n_neighbors=min(15, len(rows) - 1), metric=metric, random_state=seed)
    with warnings.catch_warnings():  # a seed makes UMAP single-threaded, which it announces each time
        warnings.filterwarnings("ignore", message="n_jobs value", category=UserWarning)
        xy = np.asarray(reducer.fit_transform(Z[rows]))
    return xy, rows, "umap", ("UMAP 1", "UMAP 2")


def _scatter_groups(ax: Any, xy: np.ndarray, groups: np.ndarray, names: Dict[int, str], colours: Dict[int, int],
                    plt: Any) -> None:
    """One colour per group (`colours`: group -> colour number; -1: grey noise), a legend for
    at most 20 groups (beyond 20 the colours repeat and a legend would mislead)."""
    noise = groups == -1
    if noise.any():
        ax.scatter(xy[noise, 0], xy[noise, 1], s=3, c="#cccccc", label="noise")
    ids = np.unique(groups[~noise])
    cmap = plt.get_cmap("tab10" if max(colours.values(), default=0) < 10 else "tab20")  # tab20 pairs by shade
    size = 3 if len(groups) > 2000 else 12
    for c in ids:
        m = groups == c
        ax.scatter(xy[m, 0], xy[m, 1], s=size, color=cmap(colours[int(c)] % cmap.N), label=names.get(int(c), str(c)))
    if len(ids) <= 20:
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, markerscale=2, frameon=False)


def _map_png(xy: np.ndarray, rows: np.ndarray, axes_names: Sequence[str], title: str, labels_pred: np.ndarray,
             labels_true: Optional[np.ndarray], class_names: Optional[Sequence[str]]) -> bytes:
    """The map coloured by cluster and, when true labels exist, by true class beside it."""
    pred = labels_pred[rows]
    clusters = [int(c) for c in np.unique(labels_pred) if c != -1]
    cluster_colour = {c: i for i, c in enumerate(clusters)}
    panels = [("by cluster", pred, {c: f"cluster {c}" for c in clusters}, cluster_colour)]
    if labels_true is not None:
        panels.append(("by true class", *_class_groups(labels_true, labels_pred, rows, class_names, cluster_colour)))
    plt = _plt()
    fig, axes = plt.subplots(1, len(panels), figsize=(7.5 * len(panels), 6.0), squeeze=False)
    for ax, (what, groups, names, colours) in zip(axes[0], panels):
        _scatter_groups(ax, xy, groups, names, colours, plt)
        ax.set_xlabel(axes_names[0])
        ax.set_ylabel(axes_names[1])
        ax.set_title(what)
    fig.suptitle(title)
    fig.tight_layout()
    return _png(fig)


def _class_groups(labels_true: np.ndarray, labels_pred: np.ndarray, rows: np.ndarray,
                  class_names: Optional[Sequence[str]], cluster_colour: Dict[int, int]):
    """The true-class panel's groups (class codes of the mapped rows), names and colours: each
    class in the colour of the cluster matched to it, so that the two panels compare at a glance;
    unmatched classes take the colours after the clusters'."""
    from .. import metrics

    classes, codes = np.unique(labels_true, return_inverse=True)
    match = metrics.match_clusters(labels_true, labels_pred)  # cluster -> class
    class_of = {int(np.flatnonzero(classes == cls)[0]): int(c) for c, cls in match.items()
                if int(c) in cluster_colour and (classes == cls).any()}
    colours = {i: cluster_colour[class_of[i]] for i in class_of}
    spare = iter(range(len(cluster_colour), len(cluster_colour) + len(classes)))
    colours.update({i: next(spare) for i in range(len(classes)) if i not in colours})
    names = {i: _class_name(c, class_names) for i, c in enumerate(classes)}
    return codes[rows].astype(np.int64), names, colours


def _class_name(cls: Any, class_names: Optional[Sequence[str]]) -> str:
    """The name of a true class: class_names[cls] for an index into them, else the label."""
    is_index = isinstance(cls, (int, np.integer)) and not isinstance(cls, (bool, np.bool_))
    if class_names is not None and is_index and 0 <= int(cls) < len(class_names):
        return str(class_names[int(cls)])
    return str(cls)


def _representatives(labels_pred: np.ndarray, Z: Optional[np.ndarray], per_cluster: int) -> Dict[int, np.ndarray]:
    """Rows nearest to each cluster's mean embedding (or the first rows without embeddings)."""
    out = {}
    for c in [c for c in np.unique(labels_pred) if c != -1]:
        idx = np.flatnonzero(labels_pred == c)
        if Z is not None:
            zc = np.asarray(Z[idx], dtype=np.float64).reshape(len(idx), -1)
            mean = zc.mean(0, keepdims=True)
            d = _distances(zc, mean, "sqeuclidean", np.einsum("ij,ij->i", mean, mean))[:, 0]
            idx = idx[np.argsort(d, kind="stable")]
        out[int(c)] = idx[:per_cluster]
    return out


def _samples_png(images: np.ndarray, reps: Dict[int, np.ndarray], sizes: Dict[int, int],
                 max_clusters: int = 20) -> bytes:
    """A row of images per cluster, the row's caption left of it (captions above each row
    overlapped the row before)."""
    clusters = sorted(reps)[:max_clusters]
    per = max((len(v) for v in reps.values()), default=1)
    plt = _plt()
    fig, axes = plt.subplots(len(clusters), per, figsize=(1.6 + per * 1.1, 0.4 + len(clusters) * 1.15),
                             squeeze=False)  # the height again below, for the title's margin
    for r, c in enumerate(clusters):
        for k in range(per):
            ax = axes[r, k]
            ax.axis("off")
            if k < len(reps[c]):
                img = np.asarray(images[reps[c][k]])
                ax.imshow(img, cmap="gray" if img.ndim == 2 else None)
        axes[r, 0].text(-0.12, 0.5, f"cluster {c}\n{sizes[c]} points", transform=axes[r, 0].transAxes,
                        ha="right", va="center", fontsize=9)
    height = 0.4 + len(clusters) * 1.15
    fig.subplots_adjust(left=1.4 / (1.6 + per * 1.1), top=1 - 0.45 / height, wspace=0.08, hspace=0.12)
    fig.suptitle("Samples nearest each cluster's centre")
    return _png(fig)


def top_terms(texts: Sequence[str], labels_pred: np.ndarray, n_terms: int = 8) -> Dict[int, List[str]]:
    """Words most over-represented in each cluster relative to the whole corpus."""
    tok = [[w for w in re.findall(r"[a-zA-Z][a-zA-Z'-]+", t.lower()) if w not in _STOP] for t in texts]
    total = Counter(w for ws in tok for w in set(ws))
    n = len(texts)
    out = {}
    for c in [c for c in np.unique(labels_pred) if c != -1]:
        idx = np.flatnonzero(labels_pred == c)
        cnt = Counter(w for i in idx for w in set(tok[i]))
        score = {w: (k / len(idx)) * np.log((n + 1) / (total[w] + 1)) for w, k in cnt.items()}
        # Words seen in several of the cluster's texts first, then by over-representation.
        ranked = sorted(score, key=lambda w: (-(cnt[w] >= 2), -score[w], w))
        out[int(c)] = ranked[:n_terms]
    return out


def _img_tag(png: bytes, alt: str, css_class: str = "") -> str:
    cls = f' class="{css_class}"' if css_class else ""
    return f'<img{cls} alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


#: One spelling of each column a table may hold, whoever made the rows (the demo's comparison
#: rows use the metric keys of clustering_report).
HEADERS = {"accuracy": "ACC", "acc": "ACC", "nmi": "NMI", "ari": "ARI", "v_measure": "V-measure",
           "purity": "purity", "seconds": "time (s)", "f1": "F1"}


def _table(rows: List[Dict[str, Any]]) -> str:
    if not rows:
        return ""
    cols = list(rows[0])
    head = "".join(f"<th>{html.escape(HEADERS.get(str(c).lower(), str(c)))}</th>" for c in cols)
    body = ""
    for r in rows:
        cells = []
        for c in cols:
            v = r.get(c, "")
            cells.append(f"<td>{v:.3f}</td>" if isinstance(v, float) else f"<td>{html.escape(str(v))}</td>")
        body += "<tr>" + "".join(cells) + "</tr>"
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


_CSS = """body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:1.5em auto;max-width:1800px;
color:#222;padding:0 2vw}h1{font-size:1.6em}h2{font-size:1.2em;border-bottom:1px solid #ddd;padding-bottom:.2em;
margin-top:1.6em}table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ddd;padding:.3em .6em;
text-align:right}th{background:#f3f5f8}td:first-child,th:first-child{text-align:left}img{max-width:100%;height:auto}
.grid{display:flex;flex-wrap:wrap;gap:1.5em;align-items:flex-start}.grid img{flex:0 1 auto;min-width:0}
.wide{width:100%}.cl{margin:.6em 0}.terms{color:#4c72b0}
.muted{color:#777;font-size:.9em}li{margin:.15em 0}"""


def _metrics_html(m: Dict[str, Any]) -> List[str]:
    """The metrics against the true classes: the scores, then per class (keyed by name)."""
    per = [{"class": k, "matched cluster": v.get("matched_cluster"), "precision": float(v["precision"]),
            "recall": float(v["recall"]), "F1": float(v["f1"]), "support": v["support"]}
           for k, v in m["per_class"].items()]
    return ["<h2>Metrics against the true classes</h2>",
            _table([{"ACC": m["accuracy"], "NMI": m["nmi"], "ARI": m["ari"], "V-measure": m["v_measure"],
                     "purity": m["purity"]}]),
            '<p class="muted">ACC: accuracy after matching clusters to classes one to one (Hungarian); NMI: '
            "normalised mutual information; ARI: adjusted Rand index.</p>",
            "<h3>Per class, after matching</h3>", _table(per)]


def _texts_html(texts: Sequence[str], reps: Dict[int, np.ndarray], terms: Dict[int, List[str]],
                pred: np.ndarray) -> List[str]:
    parts = ["<h2>Texts per cluster</h2>"]
    for c, idx in sorted(reps.items()):
        parts.append(f'<div class="cl"><b>cluster {c}</b> ({int((pred == c).sum())} texts) '
                     f'<span class="terms">{html.escape(", ".join(terms.get(c, [])))}</span><ul>')
        parts += [f"<li>{html.escape(texts[i][:300])}</li>" for i in idx[:5]]
        parts.append("</ul></div>")
    return parts


def _plots(pngs: Dict[str, bytes], pred: np.ndarray, labels_true: Optional[np.ndarray], embeddings: Any,
           class_names: Optional[Sequence[str]], map_method: str, representation: Optional[str],
           report: Dict[str, Any], notes: List[str]) -> None:
    """Adds the confusion matrix, the sizes and the map to `pngs` (and what they are to `report`)."""
    if labels_true is not None:
        n_classes, n_clusters = len(np.unique(labels_true)), len(np.unique(pred))
        if max(n_classes, n_clusters) <= _MAX_CONFUSION_SIDE:
            pngs["confusion"] = _confusion_png(labels_true, pred, class_names)
        else:  # a dense table that size is neither readable nor cheap (classes x clusters cells)
            notes.append(f"The confusion matrix is not drawn: {n_classes} classes x {n_clusters} clusters is more "
                         f"than {_MAX_CONFUSION_SIDE} a side; the metrics above are computed from a sparse table.")
    pngs["sizes"] = _sizes_png(pred)
    if embeddings is not None:
        xy, rows, method, axes_names = map_2d(embeddings, map_method)
        what = f"{representation} embeddings" if representation else "Embeddings"
        title = f"{what}, {'UMAP' if method == 'umap' else 'first two principal components'} ({len(rows)} points)"
        pngs["map"] = _map_png(xy, rows, axes_names, title, pred, labels_true, class_names)
        report["map"] = {"method": method, "representation": representation, "n_points": int(len(rows)),
                         "panels": ["cluster"] + ([] if labels_true is None else ["true class"])}


def _map_caption(facts: Dict[str, Any]) -> str:
    """What the map shows, in words (its method, points and panels)."""
    how = ("UMAP (umap-learn)" if facts["method"] == "umap" else
           "PCA, the first two principal components (install umap-learn for a UMAP map)")
    what = f" of the {facts['representation']} embeddings" if facts["representation"] else ""
    panels = ("Left: coloured by cluster; right: by true class, each class in the colour of the cluster matched "
              "to it." if len(facts["panels"]) == 2 else "Coloured by cluster.")
    return f'<p class="muted">{html.escape(how)}{html.escape(what)}, {facts["n_points"]} points. {panels}</p>'


def write_report(out_dir: str | Path, labels_pred: Any, *, labels_true: Any = None, embeddings: Any = None,
                 images: Any = None, texts: Optional[Sequence[str]] = None,
                 class_names: Optional[Sequence[str]] = None, comparison: Optional[List[Dict[str, Any]]] = None,
                 title: str = "embedcluster report", notes: Optional[List[str]] = None,
                 samples_per_cluster: int = 8, map_method: str = "auto",
                 representation: Optional[str] = None) -> Path:
    """Writes the report folder and returns the path of ``report.html``.

    Parameters
    ----------
    out_dir : folder to create or reuse; files in it are replaced atomically.
    labels_pred : cluster of each point (-1 noise).
    labels_true : optional true classes; adds the confusion matrix, the metrics and the map's
        panel coloured by true class.
    embeddings : optional (n, d) array; adds the 2-D map and orders samples by centrality. Pass
        the representation the clustering used (the one that won a comparison or a selection).
    images : optional (n, H, W) or (n, H, W, C) array; adds sample images per cluster.
    texts : optional list of n strings; adds sample texts and top terms per cluster.
    class_names : names of the true classes (index = label): used in the tables, the plots and
        metrics.json's per-class results.
    comparison : optional rows (dicts) shown as the first table, e.g. raw vs transferred; the
        metric keys of clustering_report (accuracy, nmi, ari) and seconds are shown as ACC, NMI,
        ARI and time (s), as in the other tables.
    notes : optional lines of text shown under the title.
    map_method : "auto" (UMAP when umap-learn is installed, else PCA), "umap" or "pca".
    representation : optional name of the embeddings (e.g. "transferred"), in the map's title.
    """
    from .. import metrics

    if map_method not in MAP_METHODS:
        raise ValueError(f"map_method={map_method!r} should be one of {MAP_METHODS}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pred = np.asarray(labels_pred).astype(np.int64).ravel()
    n = len(pred)
    for name, arr in (("labels_true", labels_true), ("embeddings", embeddings), ("images", images), ("texts", texts)):
        if arr is not None and len(arr) != n:
            raise ValueError(f"{name} has {len(arr)} rows but labels_pred has {n}")
    truth = None if labels_true is None else np.asarray(labels_true)
    shown = Progress("report", total=4, unit="step")  # as the caller shows progress
    shown.begin("metrics")
    pngs: Dict[str, bytes] = {}
    report: Dict[str, Any] = {"title": title, "n_points": n,
                              "n_clusters": int(len(np.unique(pred[pred >= 0]))), "n_noise": int((pred == -1).sum())}
    if comparison:
        report["comparison"] = comparison
    notes = list(notes or [])
    if truth is not None:
        report["metrics"] = metrics.clustering_report(truth, pred, class_names=class_names)
    shown.begin("plots and 2-D map")
    _plots(pngs, pred, truth, embeddings, class_names, map_method, representation, report, notes)
    shown.begin("samples")
    reps = _representatives(pred, None if embeddings is None else np.asarray(embeddings), samples_per_cluster)
    if images is not None:
        sizes = {c: int((pred == c).sum()) for c in reps}
        pngs["samples"] = _samples_png(np.asarray(images), reps, sizes)
    terms = top_terms(texts, pred) if texts is not None else {}
    if terms:
        report["top_terms"] = {str(k): v for k, v in terms.items()}
    shown.begin("writing")

    for name, data in pngs.items():
        atomic_write_bytes(out / f"{name}.png", data)
    atomic_write_bytes(out / "metrics.json", dumps(report, allow_nan=True).encode())

    parts = [f"<h1>{html.escape(title)}</h1>",
             f'<p class="muted">{n} points, {report["n_clusters"]} clusters, {report["n_noise"]} noise points.</p>']
    parts += [f"<p>{html.escape(line)}</p>" for line in notes]
    if comparison:
        parts += ["<h2>Comparison</h2>", _table(comparison)]
    if "metrics" in report:
        parts += _metrics_html(report["metrics"])
    if "map" in pngs:
        parts += ["<h2>Map</h2>", _map_caption(report["map"]), _img_tag(pngs["map"], "2-D map", "wide")]
    parts.append('<h2>Plots</h2><div class="grid">')
    parts += [_img_tag(pngs[name], alt) for name, alt in (("confusion", "confusion matrix"),
                                                          ("sizes", "cluster sizes")) if name in pngs]
    parts.append("</div>")
    if "samples" in pngs:
        parts += ["<h2>Samples per cluster</h2>", _img_tag(pngs["samples"], "samples per cluster")]
    if texts is not None:
        parts += _texts_html(texts, reps, terms, pred)
    doc = (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
           f'<meta name="viewport" content="width=device-width, initial-scale=1">'
           f"<style>{_CSS}</style></head><body>{''.join(parts)}</body></html>")
    path = out / "report.html"
    atomic_write_bytes(path, doc.encode("utf-8"))
    shown.update(1)
    shown.close()
    logger.info("report written to %s", path)
    return path
