"""``python -m odenet.cli``: the ``odenet`` command."""

import sys

from odenet.cli.dispatch import main

sys.exit(main())
