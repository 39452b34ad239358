"""The fixtures of a node running in the test process (``running``, ``start``), for every
test of ``tests/node``."""

from tests.node.test_node import running, start  # noqa: F401  (fixtures)
