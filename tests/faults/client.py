"""A client process of a fault run: operations against the cluster, each recorded.

    python -m tests.faults.client CONFIG.json

Configured like a web process of the demo project (``ADDRESS`` one node, ``CLUSTER``
all of them, ``DATABASE`` that node's own SQLite file), it runs ``threads`` threads
until its stdin closes or its deadline passes, each doing one operation at a time:

- ``write``: ``do("kv.set", key, value)`` with a value used once;
- ``read``: ``django_raft.read()`` then the row from this server's database
  (``read_via`` "db"), or the read-only command ``kv.read`` (``read_via`` "route");
- ``incr``: ``do("kv.incr", key)``, the counter of exactly-once increments (a session);
- ``stale``: the planted bug: reads of the node's database under ``read(stale=True)``,
  with no read index (what a caller gets who skips ``read()``): never linearizable
  when the node lags.

Keys change every ``key_period`` seconds (the search's cost grows with the operations of
one key): ``r<period>-<n>`` registers and ``c<period>`` counters. Each operation is one
JSON line written before the call (its outcome ``info`` until the second line, written
after it, says otherwise): who, what, the key, the value or result, ``ok``/``fail``/``info``
(``fail`` when the error proves the command was not applied, ``info`` when it may have
been, per ``django_raft.exceptions.may_have_applied``), and its invocation and
completion times (``time.monotonic()``, the same clock in every process).
"""

from __future__ import annotations

import json
import os
import random
import sys
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any


@dataclass
class ClientSpec:
    name: str
    address: str
    cluster: str
    database: str
    secret: str
    threads: int
    seed: int
    origin: float
    deadline: float
    output: str
    mode: str = "honest"
    """``honest``: writes, reads, increments; ``stale``: the planted stale reads."""
    read_via: str = "db"
    key_period: float = 4.0
    keys: int = 3
    command_timeout: float = 3.0

    def write(self, path: str) -> None:
        with open(path, "w") as out:
            json.dump(asdict(self), out)


def register_key(spec: ClientSpec, rng: random.Random) -> str:
    period = int((time.monotonic() - spec.origin) / spec.key_period)
    return f"r{period}-{rng.randrange(spec.keys)}"


def counter_key(spec: ClientSpec) -> str:
    return f"c{int((time.monotonic() - spec.origin) / spec.key_period)}"


def main(config_path: str) -> None:
    with open(config_path) as source:
        spec = ClientSpec(**json.load(source))
    os.environ.pop("DATABASE_URL", None)
    os.environ.update(
        {
            "DJANGO_SETTINGS_MODULE": "demo_project.settings",
            "DJANGO_SQLITE_PATH": spec.database,
            "RAFT_ADDRESS": spec.address,
            "RAFT_CLUSTER": spec.cluster,
            "RAFT_SECRET": spec.secret,
            "RAFT_COMMAND_TIMEOUT": str(spec.command_timeout),
        }
    )
    import django

    django.setup()
    import django_raft
    from demo_project.kv.models import KeyValue
    from django_raft.exceptions import may_have_applied

    stop = threading.Event()

    def watch_stdin() -> None:
        sys.stdin.read()
        stop.set()

    threading.Thread(target=watch_stdin, daemon=True).start()
    reader = django_raft.Client()
    lock = threading.Lock()
    out = open(spec.output, "w", buffering=1)  # noqa: SIM115 (closed below)

    def local(key: str) -> str | None:
        value: str | None = KeyValue.objects.filter(pk=key).values_list("value", flat=True).first()
        return value

    def read(key: str) -> str | None:
        if spec.mode == "stale":
            with django_raft.read(stale=True):
                return local(key)
        if spec.read_via == "db":
            with django_raft.read():
                return local(key)
        value: str | None = reader.read("kv.read", key=key)
        return value

    def operate(thread: int) -> None:
        rng = random.Random(f"{spec.seed}-{spec.name}-{thread}")
        process = f"{spec.name}-{thread}"
        for i in range(1 << 62):
            if stop.is_set() or time.monotonic() > spec.deadline:
                return
            dice = rng.random()
            value: Any = None
            if spec.mode == "stale":
                time.sleep(0.005)  # a reader, not a load
                f, key = "read", register_key(spec, rng) if dice < 0.7 else counter_key(spec)
            elif dice < 0.35:
                f, key, value = "write", register_key(spec, rng), f"{process}-{i}"
            elif dice < 0.7:
                f, key = "read", register_key(spec, rng)
            elif dice < 0.9:
                f, key, value = "incr", counter_key(spec), 1
            else:
                f, key = "read", counter_key(spec)
            invoke = time.monotonic()
            # Written before the call: a client killed in the middle leaves it unknown.
            begun = {"process": process, "seq": i, "f": f, "key": key, "value": value}
            with lock:
                out.write(json.dumps({**begun, "status": "info", "invoke": invoke}) + "\n")
            result: Any = None
            error = ""
            try:
                if f == "write":
                    django_raft.do("kv.set", key=key, value=value)
                elif f == "incr":
                    result = django_raft.do("kv.incr", key=key, by=1)
                else:
                    result = read(key)
                    if key.startswith("c") and result is not None:
                        result = int(result)
                status = "ok"
            except Exception as exception:
                status = "info" if may_have_applied(exception) else "fail"
                error = f"{type(exception).__name__}: {str(exception)[:120]}"
            record = {
                **begun,
                "result": result,
                "status": status,
                "invoke": invoke,
                "complete": time.monotonic(),
                "error": error,
            }
            with lock:
                out.write(json.dumps(record) + "\n")

    workers = [threading.Thread(target=operate, args=(t,)) for t in range(spec.threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    out.close()


if __name__ == "__main__":
    main(sys.argv[1])
