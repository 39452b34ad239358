"""Settings of a benchmark node: the demo project (its ``kv`` app) plus ``bench.noop``.

``DEBUG`` is off, as in production: with it on, Django records every SQL query.
"""

from demo_project.settings import *  # noqa: F403
from demo_project.settings import INSTALLED_APPS

DEBUG = False
INSTALLED_APPS = [*INSTALLED_APPS, "bench"]
