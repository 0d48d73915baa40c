"""embedcluster.probe: the public path of :mod:`embedcluster.transfer.probe` (the same module
object, so attributes set on one are seen through the other)."""

import sys

from .transfer import probe as _module

sys.modules[__name__] = _module
