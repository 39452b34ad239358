"""A raftnode process whose application also has a slow command.

    python tests/integration/slow_node.py [raftnode options]

``test.sleep(seconds, tag)`` sleeps, then counts its application in the key
``slow:<tag>`` (so each node's database shows how many times it ran there), and returns
``tag``. With ``SLOW_SNAPSHOT=<seconds>`` in the environment, saving a snapshot of the
state (the application's state hooks) takes that much longer. Everything else is the
demo project's.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "demo_project.settings")


def main() -> None:
    import django

    django.setup()
    from django.core.management import call_command

    from demo_project.kv.models import KeyValue
    from django_raft import commands

    def sleep(context: commands.Context, seconds: float, tag: str) -> str:
        time.sleep(seconds)
        rows = KeyValue.objects.using(context.using)
        row = rows.filter(key=f"slow:{tag}").first()
        count = int(row.value) + 1 if row is not None else 1
        rows.update_or_create(key=f"slow:{tag}", defaults={"value": str(count)})
        return tag

    commands.register("test.sleep", sleep)
    slow_snapshot = float(os.environ.get("SLOW_SNAPSHOT", "0"))
    if slow_snapshot:
        from django_raft.node import statemachine

        def save(using: str) -> bytes:
            time.sleep(slow_snapshot)
            return statemachine._dump_models(using)

        commands.state_hooks(save, statemachine._load_models)
    call_command("raftnode", *sys.argv[1:])


if __name__ == "__main__":
    main()
