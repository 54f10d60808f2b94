"""``python -m pipeline`` runs the same command line as ``space-pipeline``."""

import sys

from pipeline.cli import main

sys.exit(main())
