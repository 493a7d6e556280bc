"""``python -m regtorch`` runs the command line (also under ``torchrun``)."""

import sys

from regtorch.cli import main

sys.exit(main())
