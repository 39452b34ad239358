"""Settings of the ASGI web process of tests/integration/test_asgi.py and bench/asgi: the
demo project's (one server's database and ``RAFT_*`` node addresses), with the views of
``asgi_app`` as its URLs."""

from demo_project.settings import *  # noqa: F403

ROOT_URLCONF = "tests.integration.asgi_app"
MIDDLEWARE = []
