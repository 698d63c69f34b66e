"""The exception hierarchy, re-exported where users look for it (defined in ``planner.errors``)."""

from planner.errors import *  # noqa: F401,F403
from planner.errors import __all__  # noqa: F401
