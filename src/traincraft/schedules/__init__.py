"""Learning-rate schedules (see :mod:`traincraft.schedules.plan`)."""

from traincraft.schedules.plan import *  # noqa: F403
from traincraft.schedules.plan import __all__, _table  # noqa: F401
