"""``python -m chaos``: see :mod:`chaos.cli`."""

import sys

from .cli import main

sys.exit(main())
