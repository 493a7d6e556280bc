"""Ready-made training callbacks (public path; they live in :mod:`regtorch.nn.callbacks`)."""

from regtorch.nn.callbacks import *  # noqa: F403
from regtorch.nn.callbacks import __all__  # noqa: F401
