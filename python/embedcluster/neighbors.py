"""embedcluster.neighbors: the public path of :mod:`embedcluster.cluster.neighbors` (the same
module object, so attributes set on one are seen through the other)."""

import sys

from .cluster import neighbors as _module

sys.modules[__name__] = _module
