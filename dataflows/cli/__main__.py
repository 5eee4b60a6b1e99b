"""``python -m dataflows.cli``: the ``fraudflow`` command."""

import sys

from dataflows.cli import main

sys.exit(main())
