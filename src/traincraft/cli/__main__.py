"""``python -m traincraft.cli``: the same command as ``traincraft``."""

import sys

from traincraft.cli import main

sys.exit(main())
