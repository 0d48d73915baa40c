"""embedcluster.report: the public path of :mod:`embedcluster.transfer.report` (the same module
object, so attributes set on one are seen through the other)."""

import sys

from .transfer import report as _module

sys.modules[__name__] = _module
