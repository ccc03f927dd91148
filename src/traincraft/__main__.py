"""``python -m traincraft`` (also what ``torchrun -m traincraft`` runs)."""

import sys

from traincraft.cli import main

sys.exit(main())
