"""embedcluster.models: the public path of :mod:`embedcluster.transfer.models` (the same module
object, so attributes set on one are seen through the other)."""

import sys

from .transfer import models as _module

sys.modules[__name__] = _module
