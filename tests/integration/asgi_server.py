"""A uvicorn process serving ``tests.integration.asgi_app`` as a web process of one
node's server (its database, its ``ADDRESS``), for test_asgi.py and bench/asgi."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import requests

from .cluster import ROOT, Node, free_port, wait_for


class AsgiServer:
    """``uvicorn`` (asyncio loop, h11) on 127.0.0.1, a web process of ``node``'s server.
    ``close()`` kills it."""

    def __init__(self, node: Node, **settings: Any) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = node.env()
        env.pop("RAFT_NODE_ID", None)  # a web process, not the node
        env["DJANGO_SETTINGS_MODULE"] = "tests.integration.asgi_settings"
        env.update({f"RAFT_{key}": str(value) for key, value in settings.items()})
        self.log_path = node.cluster.workdir / f"uvicorn-{self.port}.log"
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "uvicorn",
                    "tests.integration.asgi_app:application",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    "--loop",
                    "asyncio",
                    "--http",
                    "h11",
                    "--lifespan",
                    "off",
                    "--log-level",
                    "warning",
                    "--backlog",
                    "512",
                ],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_for(lambda: self.get("ping", timeout=1)["ok"], 30, "uvicorn to answer")

    def get(self, route: str, timeout: float = 30, **params: Any) -> dict[str, Any]:
        response = requests.get(f"{self.url}/{route}", params=params, timeout=timeout)
        answer: dict[str, Any] = response.json()
        return answer

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=20)
