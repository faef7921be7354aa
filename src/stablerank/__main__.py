"""``python -m stablerank`` runs the command line (see :mod:`stablerank.cli`)."""

import sys

from stablerank.cli import main

sys.exit(main())
