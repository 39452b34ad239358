"""A raftnode process that floods the cluster with proposals once it leads.

    python tests/integration/flood_node.py DIRECTORY COUNT [raftnode options]

It runs ``manage.py raftnode`` with the given options and, in another thread, waits
until this node is the leader, proposes COUNT ``kv.set`` commands without waiting
(``RaftNode.propose_async``: all of them outstanding at once), waits for every answer
and writes a summary to DIRECTORY/flood-<node id>.json: how many were acknowledged,
refused as overload or failed, and the terms seen while it ran (more than one means
leadership changed).
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "demo_project.settings")


def flood(directory: Path, count: int) -> None:
    from django_raft.node.runner import RaftNode
    from django_raft.protocol.wire import encode_command

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        node = RaftNode.current
        if node is not None and node.status()["state"] == "leader":
            break
        time.sleep(0.05)
    else:
        return
    terms = {node.status()["term"]}
    datas = [encode_command("kv.set", {"key": f"k{i}", "value": str(i)}) for i in range(count)]
    answered = threading.Semaphore(0)
    started = time.monotonic()
    futures = [node.propose_async(data) for data in datas]
    for future in futures:
        future.add_done_callback(lambda _: answered.release())
    for _ in futures:
        while not answered.acquire(timeout=0.1):
            terms.add(node.status()["term"])
    seconds = time.monotonic() - started
    terms.add(node.status()["term"])
    kinds: Counter[str] = Counter()
    acked = []
    for i, future in enumerate(futures):
        error = future.exception()
        if error is None and future.result().ok:
            acked.append(i)
        kinds["acked" if error is None else type(error).__name__] += 1
    summary = {
        "node": node.node_id,
        "outcomes": dict(kinds),
        "acked": acked,
        "terms": sorted(terms),
        "max_turn_ms": node.status()["max_turn_ms"],
        "seconds": seconds,
    }
    (directory / f"flood-{node.node_id}.json").write_text(json.dumps(summary))


def main() -> None:
    directory, count, options = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
    import django

    django.setup()
    from django.core.management import call_command

    threading.Thread(target=flood, args=(directory, count), daemon=True).start()
    call_command("raftnode", *options)


if __name__ == "__main__":
    main()
