"""embedcluster: find the classes hidden in unlabeled data with pretrained embeddings and a
fast native clustering engine (exact k-means, DBSCAN and nearest-neighbour search)."""

from __future__ import annotations

from ._version import __version__
from .cluster import DBSCAN, KMeans, NearestNeighbors
from .info import build_info
from .transfer.heads import ClusterHead
from .transfer.manifold import UMAPClustering

__all__ = ["KMeans", "DBSCAN", "NearestNeighbors", "ClusterHead", "UMAPClustering", "build_info", "__version__"]
