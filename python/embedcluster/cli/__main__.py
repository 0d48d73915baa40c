"""``python -m embedcluster.cli``: the ``embedcluster`` command."""

import sys

from . import main

sys.exit(main())
