"""A real browser against a live cluster: Debian's headless Chromium driven by Playwright.

Three ``raftnode`` processes and one web process (``runserver``, sharing n1's database as
a web process on n1's server would). The browser logs in, sees one leader and three
reachable members, sees the charts of a node's recent history draw the commands it sends
(commit rate, apply lag per member, leader changes, handler time), transfers leadership
from the admin and watches the dashboard show the new leader without a reload, and the
charts mark the change; adds a learner, sees the log entries' outcomes (a result, an
error), opens a log entry to see its decoded arguments, and finally sees the charts keep
their points and say so when their node stops answering. On failure a screenshot is
saved (its path is printed); with ``ADMIN_SCREENSHOTS=docs/img`` the dashboard, members
and log pages are saved there.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from playwright.sync_api import FloatRect, Page, expect, sync_playwright

from tests.integration.cluster import ROOT, Cluster, Node, free_port, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.integration]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-extensions",
    "--disable-sync",
    "--no-first-run",
    "--metrics-recording-only",
]
PASSWORD = "browser-test-password"

if not Path(CHROMIUM).exists():
    if os.environ.get("CI") == "true":
        raise RuntimeError(f"{CHROMIUM} is missing under CI=true; .ci/run installs it")
    pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium)", allow_module_level=True)


class Web:
    """A web process serving the admin next to n1."""

    def __init__(self, node: Node, workdir: Path) -> None:
        self.node = node
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**node.env(), "DJANGO_DEBUG": "1"}
        self.env.pop("RAFT_NODE_ID")
        self.log = (workdir / "web.log").open("ab")
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        manage = [sys.executable, "manage.py"]
        made = subprocess.run(
            [
                *manage,
                "createsuperuser",
                "--noinput",
                "--username",
                "admin",
                "--email",
                "admin@example.com",
            ],
            cwd=ROOT,
            env={**self.env, "DJANGO_SUPERUSER_PASSWORD": PASSWORD},
            capture_output=True,
            timeout=60,
        )
        assert made.returncode == 0, made.stderr.decode()
        self.process = subprocess.Popen(
            [*manage, "runserver", "--noreload", "--nothreading", f"127.0.0.1:{self.port}"],
            cwd=ROOT,
            env=self.env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        wait_for(lambda: requests.get(f"{self.url}/admin/login/", timeout=2).ok, 30, "runserver")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        self.log.close()


@pytest.fixture
def site(tmp_path: Path) -> Iterator[tuple[Cluster, Web]]:
    cluster = Cluster(tmp_path)
    web = Web(cluster.nodes["n1"], tmp_path)
    try:
        cluster.start()
        cluster.leader()
        web.start()
        yield cluster, web
    finally:
        web.stop()
        cluster.close()


@pytest.fixture
def page(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Page]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        context = browser.new_context(viewport={"width": 1400, "height": 900})
        page = context.new_page()
        page.set_default_timeout(15_000)
        try:
            yield page
        finally:
            report = getattr(request.node, "rep_call", None)
            if report is not None and report.failed:
                shot = tmp_path / "failure.png"
                page.screenshot(path=str(shot), full_page=True)
                print(f"screenshot of the failure: {shot}")
            context.close()
            browser.close()


SHOT_HEIGHT = 1200
"""Saved screenshots stop this far down the page (the README's stay under 200 KB)."""


def save(page: Page, name: str) -> None:
    folder = os.environ.get("ADMIN_SCREENSHOTS")
    if folder:
        size = page.viewport_size or {"width": 1400, "height": 900}
        height = min(int(page.evaluate("document.documentElement.scrollHeight")), SHOT_HEIGHT)
        clip: FloatRect = {"x": 0, "y": 0, "width": size["width"], "height": height}
        page.screenshot(path=str(Path(folder) / f"{name}.png"), full_page=True, clip=clip)


SERIES = """([chart, name]) => {
  const path = document.querySelector(`#raft-chart-${chart} path[data-series="${name}"]`);
  if (!path) { return null; }
  const d = path.getAttribute("d");
  return {points: Number(path.dataset.points), max: Number(path.dataset.max || "NaN"),
          coordinates: (d.match(/[ML]/g) || []).length + (d.match(/H/g) || []).length};
}"""


def series(page: Page, chart: str, name: str) -> dict[str, float] | None:
    """What one line of a chart holds: its points, largest value, coordinates drawn."""
    found: dict[str, float] | None = page.evaluate(SERIES, [chart, name])
    return found


def wait_series(
    page: Page, chart: str, name: str, points: int, above: float = 0.0, timeout: float = 15_000
) -> None:
    """Wait until a chart's line has ``points`` points or more, one of them over ``above``
    (``timeout`` in ms)."""
    page.wait_for_function(
        f"""(args) => {{ const s = ({SERIES})(args);
            return s !== null && s.points >= {points} && s.max > {above}; }}""",
        arg=[chart, name],
        timeout=timeout,
    )


def choose_history(page: Page, node_id: str) -> None:
    """Show ``node_id``'s history in the charts, and wait for its samples."""
    page.select_option("#raft-history-node", node_id)
    expect(page.locator("#raft-charts")).to_have_attribute("data-node", node_id)
    expect(page.locator("#raft-history-status")).to_contain_text("samples, one a second")


def test_operate_the_cluster_from_a_browser(site: tuple[Cluster, Web], page: Page) -> None:
    cluster, web = site
    p = page

    p.goto(f"{web.url}/admin/login/")
    p.fill("#id_username", "admin")
    p.fill("#id_password", PASSWORD)
    p.click("input[type=submit]")
    expect(p.locator("#site-name")).to_be_visible()

    # The dashboard: three reachable members, one leader.
    p.goto(f"{web.url}/admin/django_raft/member/dashboard/")
    rows = p.locator("tr.raft-member")
    expect(rows).to_have_count(3)
    expect(p.locator('tr.raft-member[data-reachable="yes"]')).to_have_count(3)
    expect(p.locator('tr.raft-member[data-state="leader"]')).to_have_count(1)
    old = cluster.leader().node_id
    expect(p.locator("#raft-leader")).to_have_text(old)

    # The charts: this server's node (n1) by default, drawing the commands sent in bursts.
    expect(p.locator("#raft-charts")).to_have_attribute("data-node", "n1")
    for burst in range(3):
        time.sleep(1.2)
        for i in range(15):
            cluster.nodes["n1"].do("kv.set", key=f"chart-{burst}-{i}", value="x")
    cluster.nodes["n1"].do("kv.set", key="browser", value="hello from the log page")
    cluster.nodes["n1"].do("kv.incr", key="browser")  # fails: its outcome is an error
    wait_series(p, "commit", "commit_rate", points=3)
    commit = series(p, "commit", "commit_rate")
    assert commit is not None and commit["max"] > 1 and commit["coordinates"] >= 3
    wait_series(p, "handler", "handler_mean", points=1)
    assert (series(p, "handler", "handler_p99") or {}).get("points", 0) >= 1
    assert series(p, "lag", "lag:n1") is not None
    term = series(p, "leader", "term")
    assert term is not None and term["points"] >= 3
    expect(p.locator("#raft-now-commit")).to_contain_text("/s · commit #")
    assert p.locator("#raft-chart-commit text", has_text="UTC").count() == 1

    # Transfer leadership from a member's page, in a second tab; the first one follows.
    target = next(n.node_id for n in cluster.founders if n.node_id != old)
    other = p.context.new_page()
    other.goto(f"{web.url}/admin/django_raft/member/{target}/change/")
    other.click("button[value=transfer_leadership]")
    other.click("#raft-confirm")
    expect(other.locator("ul.messagelist")).to_contain_text(
        f"Transfer leadership to {target}: done."
    )
    expect(p.locator("#raft-leader")).to_have_text(target, timeout=15_000)
    expect(p.locator(f'tr.raft-member[data-node="{target}"]')).to_have_attribute(
        "data-state", "leader"
    )
    # n1's history saw the leader change: a line on the leader chart, naming the new one.
    expect(p.locator(f'#raft-chart-leader line.raft-marker[data-leader="{target}"]')).to_have_count(
        1, timeout=15_000
    )

    # Add a learner through the form, start it, and see it join.
    learner = cluster.add_node("n4")
    other.goto(f"{web.url}/admin/django_raft/member/add/")
    other.fill("#id_node_id", "n4")
    other.fill("#id_address", learner.address)
    other.select_option("#id_role", "learner")
    other.click("#raft-add-member input[type=submit]")
    expect(other.locator("ul.messagelist")).to_contain_text("Add n4 as a learner: done.")
    learner.start()
    row = p.locator('tr.raft-member[data-node="n4"]')
    expect(row).to_have_attribute("data-reachable", "yes", timeout=20_000)
    expect(row.locator("td").nth(2)).to_have_text("learner")
    # The new leader's history: the lag of every member, as it sees their match index.
    choose_history(p, target)
    for member in ("n1", "n2", "n3", "n4"):
        wait_series(p, "lag", f"lag:{member}", points=1, above=-1, timeout=45_000)
    expect(p.locator("#raft-legend-lag .raft-legend-item")).to_have_count(4)
    wait_series(p, "commit", "commit_rate", points=3)
    save(p, "dashboard")
    other.goto(f"{web.url}/admin/django_raft/member/")
    save(other, "members")

    # The log: newest first, with outcomes; an entry's page shows its decoded arguments.
    other.goto(f"{web.url}/admin/django_raft/logentry/")
    failed = other.locator("#result_list tr", has_text="kv.incr").first
    expect(failed.locator(".raft-outcome")).to_have_attribute("data-status", "error")
    expect(failed.locator(".raft-outcome")).to_contain_text("is not an integer")
    expect(other.locator("#result_list tr", has_text="kv.set").first).to_contain_text("ok: 1")
    save(other, "log")
    other.locator("#result_list tr", has_text="kv.set").first.locator("th a").click()
    expect(other.locator("pre.raft-payload")).to_contain_text('"key": "browser"')
    expect(other.locator("pre.raft-payload")).to_contain_text("hello from the log page")

    # The charts' node stops answering: they keep what they drew and say so.
    choose_history(p, old)
    wait_series(p, "commit", "commit_rate", points=2, above=-1)
    drawn = series(p, "commit", "commit_rate")
    cluster.nodes[old].kill()
    expect(p.locator("#raft-history-status")).to_contain_text(f"{old} did not answer")
    expect(p.locator("#raft-charts")).to_have_class(re.compile(r"\braft-stale\b"))
    kept = series(p, "commit", "commit_rate")
    assert drawn is not None and kept is not None and kept["points"] >= drawn["points"]
    expect(p.locator(f'tr.raft-member[data-node="{old}"]')).to_have_attribute(
        "data-reachable", "no"
    )
