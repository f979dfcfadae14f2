"""``python -m hieraquery_core``: see :mod:`hieraquery_core.cli`."""

import sys

from .cli import main

sys.exit(main())
