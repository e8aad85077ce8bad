"""``python -m flows.cli``: the ``anodet`` command line."""

import sys

from flows.cli import main

sys.exit(main())
