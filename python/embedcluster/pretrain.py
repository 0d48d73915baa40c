"""embedcluster.pretrain: the public path of :mod:`embedcluster.transfer.pretrain` (the same module
object, so attributes set on one are seen through the other)."""

import sys

from .transfer import pretrain as _module

sys.modules[__name__] = _module
