"""embedcluster.pipeline: the public path of :mod:`embedcluster.transfer.pipeline` (the same module
object, so attributes set on one are seen through the other)."""

import sys

from .transfer import pipeline as _module

sys.modules[__name__] = _module
