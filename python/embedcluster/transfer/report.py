"""A self-contained HTML report of a clustering: metrics, plots and samples per cluster.

`write_report` writes, into one folder, ``report.html`` (every image embedded as base64, so it
opens in a browser from disk with no server), ``metrics.json`` and the PNGs it shows: confusion
matrix (when true labels exist), cluster sizes, a 2-D map of the embeddings coloured by cluster,
and sample images (image data) or sample texts with top terms (text data) per cluster.
"""

from __future__ import annotations

import base64
import html
import io
import logging
import re
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
    names = [class_names[int(c)] if class_names is not None and 0 <= int(c) < len(class_names) else str(c)
             for c in classes]
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
    rows = np.arange(len(Z))
    if len(Z) > max_points:
        rows = np.sort(np.random.default_rng(seed).choice(len(Z), max_points, replace=False))
    S = Z[rows] - Z[rows].mean(0)
    _, _, vt = np.linalg.svd(S, full_matrices=False)
    return S @ vt[:2].T if vt.shape[0] >= 2 else np.c_[S @ vt[:1].T, np.zeros(len(S))], rows


def _map_png(Z: np.ndarray, labels_pred: np.ndarray) -> bytes:
    xy, rows = project_2d(Z)
    lab = labels_pred[rows]
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 5.0))
    noise = lab == -1
    if noise.any():
        ax.scatter(xy[noise, 0], xy[noise, 1], s=3, c="#cccccc", label="noise")
    ids = np.unique(lab[~noise])
    cmap = plt.get_cmap("tab10" if len(ids) <= 10 else "tab20")  # tab20 pairs neighbours by shade
    size = 3 if len(rows) > 2000 else 12
    for i, c in enumerate(ids):
        m = lab == c
        ax.scatter(xy[m, 0], xy[m, 1], s=size, color=cmap(i % cmap.N), label=f"cluster {c}")
    ax.set_title(f"Embeddings, first two principal components ({len(rows)} points)")
    ax.set_xticks([])
    ax.set_yticks([])
    if len(ids) <= 20:  # a discrete legend; beyond 20 colours repeat and a legend would mislead
        ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=7, markerscale=2, frameon=False)
    return _png(fig)


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


def _samples_png(images: np.ndarray, reps: Dict[int, np.ndarray], max_clusters: int = 20) -> bytes:
    clusters = sorted(reps)[:max_clusters]
    per = max((len(v) for v in reps.values()), default=1)
    plt = _plt()
    fig, axes = plt.subplots(len(clusters), per, figsize=(per * 0.9, len(clusters) * 0.95), squeeze=False)
    for r, c in enumerate(clusters):
        for k in range(per):
            ax = axes[r, k]
            ax.axis("off")
            if k < len(reps[c]):
                img = np.asarray(images[reps[c][k]])
                ax.imshow(img, cmap="gray" if img.ndim == 2 else None)
        axes[r, 0].set_title(f"cluster {c}", fontsize=7, loc="left")
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


def _img_tag(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def _table(rows: List[Dict[str, Any]]) -> str:
    if not rows:
        return ""
    cols = list(rows[0])
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in cols)
    body = ""
    for r in rows:
        cells = []
        for c in cols:
            v = r.get(c, "")
            cells.append(f"<td>{v:.3f}</td>" if isinstance(v, float) else f"<td>{html.escape(str(v))}</td>")
        body += "<tr>" + "".join(cells) + "</tr>"
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


_CSS = """body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1100px;
color:#222;padding:0 1em}h1{font-size:1.6em}h2{font-size:1.2em;border-bottom:1px solid #ddd;padding-bottom:.2em;
margin-top:1.6em}table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ddd;padding:.3em .6em;
text-align:right}th{background:#f3f5f8}td:first-child,th:first-child{text-align:left}img{max-width:100%}
.grid{display:flex;flex-wrap:wrap;gap:1.5em;align-items:flex-start}.cl{margin:.6em 0}.terms{color:#4c72b0}
.muted{color:#777;font-size:.9em}li{margin:.15em 0}"""


def write_report(out_dir: str | Path, labels_pred: Any, *, labels_true: Any = None, embeddings: Any = None,
                 images: Any = None, texts: Optional[Sequence[str]] = None,
                 class_names: Optional[Sequence[str]] = None, comparison: Optional[List[Dict[str, Any]]] = None,
                 title: str = "embedcluster report", notes: Optional[List[str]] = None,
                 samples_per_cluster: int = 8) -> Path:
    """Writes the report folder and returns the path of ``report.html``.

    Parameters
    ----------
    out_dir : folder to create or reuse; files in it are replaced atomically.
    labels_pred : cluster of each point (-1 noise).
    labels_true : optional true classes; adds the confusion matrix and the metrics.
    embeddings : optional (n, d) array; adds the 2-D map and orders samples by centrality.
    images : optional (n, H, W) or (n, H, W, C) array; adds sample images per cluster.
    texts : optional list of n strings; adds sample texts and top terms per cluster.
    class_names : names of the true classes (index = label).
    comparison : optional rows (dicts) shown as the first table, e.g. raw vs transferred.
    notes : optional lines of text shown under the title.
    """
    from .. import metrics

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pred = np.asarray(labels_pred).astype(np.int64).ravel()
    n = len(pred)
    for name, arr in (("labels_true", labels_true), ("embeddings", embeddings), ("images", images), ("texts", texts)):
        if arr is not None and len(arr) != n:
            raise ValueError(f"{name} has {len(arr)} rows but labels_pred has {n}")
    shown = Progress("report", total=5, unit="step")  # as the caller shows progress
    shown.begin("metrics")
    pngs: Dict[str, bytes] = {}
    report: Dict[str, Any] = {"title": title, "n_points": n,
                              "n_clusters": int(len(np.unique(pred[pred >= 0]))), "n_noise": int((pred == -1).sum())}
    if comparison:
        report["comparison"] = comparison
    notes = list(notes or [])
    if labels_true is not None:
        report["metrics"] = metrics.clustering_report(labels_true, pred)
        n_classes, n_clusters = len(np.unique(np.asarray(labels_true))), len(np.unique(pred))
        if max(n_classes, n_clusters) <= _MAX_CONFUSION_SIDE:
            pngs["confusion"] = _confusion_png(np.asarray(labels_true), pred, class_names)
        else:  # a dense table that size is neither readable nor cheap (classes x clusters cells)
            notes.append(f"The confusion matrix is not drawn: {n_classes} classes x {n_clusters} clusters is more "
                         f"than {_MAX_CONFUSION_SIDE} a side; the metrics above are computed from a sparse table.")
    shown.begin("plots")
    pngs["sizes"] = _sizes_png(pred)
    shown.begin("2-D map")
    if embeddings is not None:
        pngs["map"] = _map_png(np.asarray(embeddings), pred)
    shown.begin("samples")
    reps = _representatives(pred, None if embeddings is None else np.asarray(embeddings), samples_per_cluster)
    if images is not None:
        pngs["samples"] = _samples_png(np.asarray(images), reps)
    terms = top_terms(texts, pred) if texts is not None else {}
    if terms:
        report["top_terms"] = {str(k): v for k, v in terms.items()}
    shown.begin("writing")

    for name, data in pngs.items():
        atomic_write_bytes(out / f"{name}.png", data)
    atomic_write_bytes(out / "metrics.json", dumps(report, allow_nan=True).encode())

    parts = [f"<h1>{html.escape(title)}</h1>",
             f'<p class="muted">{n} points, {report["n_clusters"]} clusters, {report["n_noise"]} noise points.</p>']
    for line in notes:
        parts.append(f"<p>{html.escape(line)}</p>")
    if comparison:
        parts += ["<h2>Comparison</h2>", _table(comparison)]
    if "metrics" in report:
        m = report["metrics"]
        parts += ["<h2>Metrics against the true classes</h2>",
                  _table([{"accuracy (Hungarian)": m["accuracy"], "NMI": m["nmi"], "ARI": m["ari"],
                           "V-measure": m["v_measure"], "purity": m["purity"]}])]
        per = [{"class": (class_names[int(k)] if class_names is not None and str(k).lstrip("-").isdigit()
                          and 0 <= int(k) < len(class_names) else k),
                "matched cluster": v.get("matched_cluster"), "precision": float(v["precision"]),
                "recall": float(v["recall"]), "F1": float(v["f1"]), "support": v["support"]}
               for k, v in m["per_class"].items()]
        parts += ["<h3>Per class, after matching</h3>", _table(per)]
    parts.append('<h2>Plots</h2><div class="grid">')
    for name, alt in (("confusion", "confusion matrix"), ("sizes", "cluster sizes"), ("map", "2-D map")):
        if name in pngs:
            parts.append(_img_tag(pngs[name], alt))
    parts.append("</div>")
    if "samples" in pngs:
        parts += ["<h2>Samples per cluster</h2>", _img_tag(pngs["samples"], "samples per cluster")]
    if texts is not None:
        parts.append("<h2>Texts per cluster</h2>")
        for c, idx in sorted(reps.items()):
            parts.append(f'<div class="cl"><b>cluster {c}</b> ({int((pred == c).sum())} texts) '
                         f'<span class="terms">{html.escape(", ".join(terms.get(c, [])))}</span><ul>')
            parts += [f"<li>{html.escape(texts[i][:300])}</li>" for i in idx[:5]]
            parts.append("</ul></div>")
    doc = (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
           f"<style>{_CSS}</style></head><body>{''.join(parts)}</body></html>")
    path = out / "report.html"
    atomic_write_bytes(path, doc.encode("utf-8"))
    shown.update(1)
    shown.close()
    logger.info("report written to %s", path)
    return path
