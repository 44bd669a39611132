"""The web dashboard in a real headless Chromium (Playwright) against a real Redis."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from redis import Redis

from actionbus import QueueManager
from actionbus.workers.presence import presence_key

from .helpers import clean_env, command, lane_backlog, wait_until

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
TOKEN = "dash-token-42"
QM = QueueManager("dev")
STREAM = QM.get_service_action_stream("inventory")
DEAD = QM.get_dead_letter_stream("inventory")
XSS = "<script>window.pwned=1</script>"

sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="no Chromium found (Debian: apt-get install chromium)")


def _port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _serve(redis_url: str, *options: str) -> Iterator[str]:
    port = _port()
    proc = subprocess.Popen(command("--url", redis_url, "dashboard", "--port", str(port),
                                    *options),
                            env=clean_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            with urllib.request.urlopen(base + "/", timeout=2):
                return True
        except urllib.error.HTTPError as exc:
            exc.close()
            return True
        except OSError:
            return False

    try:
        wait_until(up, what="dashboard listening")
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        assert proc.stderr is not None
        proc.stderr.close()


def _action(action_type: str, **data: Any) -> str:
    return json.dumps({"action_type": action_type, "action_id": f"00000000-0000-4000-8000-"
                       f"{int(time.time_ns()) % 10**12:012d}", "data": data})


def _setup(redis: Redis) -> list[str]:
    redis.xgroup_create(STREAM, "inventory", id="$", mkstream=True)
    stuck = [redis.xadd(STREAM, {"data": _action("inventory.stuck", note=XSS)}).decode()
             for _ in range(2)]
    redis.xreadgroup("inventory", "c1", {STREAM: ">"})
    for _ in range(3):
        redis.xadd(STREAM, {"data": _action("inventory.count")})
    for reason in ("rejected", "max_deliveries"):
        redis.xadd(DEAD, {"data": _action("inventory.bad", note=XSS), "reason": reason,
                          "error_type": "ActionRejected", "error_message": XSS,
                          "deliveries": "1"})
    redis.hset(presence_key(QM, "inventory"), "c1", int(time.time() * 1000) + 600_000)
    redis.hset(QM.get_schedules_key("inventory"), "nightly-count", 1796083200000)
    return stuck


def _open(pw: Any) -> tuple[Any, Any]:
    """Headless Chromium and a 1280x720 page that accepts every confirmation dialog."""
    browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
    page = browser.new_page(viewport={"width": 1280, "height": 720})
    page.on("dialog", lambda dialog: dialog.accept())
    return browser, page


def _cell(page: Any, row: str, cls: str) -> str:
    return str(page.locator(f"tr[data-service='{row}'] td.{cls}").first.inner_text())


def _lane(page: Any, lane: str, cls: str) -> str:
    """A cell of inventory's row for ``lane`` in the lanes table."""
    return str(page.locator(
        f"#lanes tr[data-service='inventory'][data-lane='{lane}'] td.{cls}").inner_text())


@pytest.mark.timeout(120)
def test_pages_render_the_numbers_and_actions_work(redis_url: str) -> None:
    """Overview, service and entry pages show the figures set up (payloads escaped, never
    run); replay, delete, dead-letter and bulk replay work end to end after confirmation;
    without the token nothing is shown."""
    redis = Redis.from_url(redis_url)
    stuck = _setup(redis)
    ARTIFACTS.mkdir(exist_ok=True)
    for base in _serve(redis_url, "--token", TOKEN):
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(base + "/services/inventory", timeout=5)
        refused.value.close()
        assert refused.value.code == 401
        with sync_api.sync_playwright() as pw:
            browser, page = _open(pw)
            page.goto(f"{base}/?token={TOKEN}")
            assert _cell(page, "inventory", "waiting") == "3"
            assert _cell(page, "inventory", "pending") == "2"
            assert _cell(page, "inventory", "dead") == "2"
            page.screenshot(path=str(ARTIFACTS / "dashboard-overview.png"), full_page=True)

            page.click("text=inventory")
            assert page.locator("#pending tr").count() == 3
            assert page.locator("#consumers").inner_text().count("alive") == 1
            assert XSS in page.locator("#dead").inner_text()
            assert page.evaluate("window.pwned") is None
            assert "nightly-count\t2026-12-01 00:00:00" in page.locator("#schedules").inner_text()
            page.screenshot(path=str(ARTIFACTS / "dashboard-service.png"), full_page=True)

            page.click(f"#pending a:text('{stuck[0]}')")
            assert '"inventory.stuck"' in page.locator("#json").inner_text()
            assert page.locator("td.deliveries").inner_text() == "1"
            assert page.evaluate("window.pwned") is None
            page.screenshot(path=str(ARTIFACTS / "dashboard-entry.png"), full_page=True)

            page.goto(f"{base}/services/inventory")
            with page.expect_navigation():
                page.locator("#dead button:text('replay')").first.click()
            assert redis.xlen(DEAD) == 1
            with page.expect_navigation():
                page.locator("#dead button:text('delete')").first.click()
            assert redis.xlen(DEAD) == 0
            with page.expect_navigation():
                page.locator("#pending button:text('dead-letter')").first.click()
            assert redis.xpending(STREAM, "inventory")["pending"] == 1
            assert redis.xrange(DEAD)[0][1][b"original_id"].decode() == stuck[0]
            page.fill("#bulk input[name=reason]", "operator")
            with page.expect_navigation():
                page.click("#bulk button")
            assert redis.xlen(DEAD) == 0
            assert redis.xlen(STREAM) == 1 + 3 + 1 + 1  # stuck[1], 3 waiting, 2 replayed
            browser.close()


@pytest.mark.timeout(120)
def test_bulk_replay_goes_past_a_letter_it_cannot_replay(redis_url: str) -> None:
    """Bulk replay with an oversize (truncated) letter among others replays the others and
    shows a page naming the one it left, with the reason, instead of stopping at it."""
    redis = Redis.from_url(redis_url)
    good = [_action("inventory.count") for _ in range(2)]
    redis.xadd(DEAD, {"data": good[0], "reason": "rejected"})
    kept = redis.xadd(DEAD, {"data": "{\"action_type\": \"inv", "reason": "oversize",
                             "truncated": "true", "data_length": "9000000",
                             "data_sha256": "ab" * 32}).decode()
    redis.xadd(DEAD, {"data": good[1], "reason": "rejected"})
    ARTIFACTS.mkdir(exist_ok=True)
    for base in _serve(redis_url):
        with sync_api.sync_playwright() as pw:
            browser, page = _open(pw)
            page.goto(f"{base}/services/inventory")
            with page.expect_navigation():
                page.click("#bulk button")
            assert page.locator("#replayed").inner_text() == (
                "replayed 2 dead letter(s) of inventory; not replayed: 1")
            refused = page.locator("#refused").inner_text()
            assert kept in refused
            assert "cannot be replayed" in refused
            page.screenshot(path=str(ARTIFACTS / "dashboard-bulk-replay-refused.png"),
                            full_page=True)
            browser.close()
    assert [i.decode() for i, _ in redis.xrange(DEAD)] == [kept]
    assert [f[b"data"].decode() for _, f in redis.xrange(STREAM)] == good


def test_read_only_refuses_actions(redis_url: str) -> None:
    """In --read-only mode the pages show no buttons and every action is refused (403)."""
    redis = Redis.from_url(redis_url)
    _setup(redis)
    dead_id = redis.xrange(DEAD)[0][0].decode()
    for base in _serve(redis_url, "--read-only"):
        with urllib.request.urlopen(base + "/services/inventory", timeout=5) as r:
            html = r.read().decode()
        assert "(read-only)" in html
        assert "<button" not in html
        request = urllib.request.Request(f"{base}/services/inventory/dead/{dead_id}/delete",
                                         method="POST", data=b"")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=5)
        refused.value.close()
        assert refused.value.code == 403
    assert redis.xlen(DEAD) == 2


@pytest.mark.timeout(120)
def test_lane_service_pages_show_each_lane(redis_url: str) -> None:
    """For a service that uses lanes, the overview and service pages add a row per lane
    (length, waiting, pending, oldest waiting, delayed), pending and recent entries name
    their lane, an entry of a lane opens and is dead-lettered from that lane; a service
    without lanes gets no lane table."""
    redis = Redis.from_url(redis_url)
    first, _ = lane_backlog(redis)["high"]
    redis.xadd(QM.get_service_action_stream("billing"), {"data": _action("billing.pay")})
    high = QM.get_lane_stream("inventory", "high")
    ARTIFACTS.mkdir(exist_ok=True)
    for base in _serve(redis_url):
        with sync_api.sync_playwright() as pw:
            browser, page = _open(pw)
            page.goto(base)

            assert _cell(page, "inventory", "waiting") == "46"
            lanes = ("high", "normal", "low")
            assert [_lane(page, n, "waiting") for n in lanes] == ["1", "5", "40"]
            assert [_lane(page, n, "pending") for n in lanes] == ["2", "0", "0"]
            assert _lane(page, "low", "length") == "40"
            assert _lane(page, "low", "delayed") == "1"
            assert _lane(page, "low", "oldest-waiting").startswith("10m0")
            assert page.locator("#lanes tr[data-service='billing']").count() == 0
            page.screenshot(path=str(ARTIFACTS / "dashboard-lanes-overview.png"),
                            full_page=True)

            page.click("#services a:text('inventory')")
            assert _lane(page, "high", "pending") == "2"
            assert page.locator("#pending td.lane").all_inner_texts() == ["high", "high"]
            assert "low" in page.locator("#recent td.lane").all_inner_texts()
            assert page.locator("#consumers").inner_text().count("alive") == 1
            page.screenshot(path=str(ARTIFACTS / "dashboard-lanes-service.png"),
                            full_page=True)

            page.click(f"#pending a:text('{first}')")
            assert '"inventory.ask"' in page.locator("#json").inner_text()
            assert "lane\thigh" in page.locator("#fields").inner_text()
            assert page.locator("td.deliveries").inner_text() == "1"

            page.goto(f"{base}/services/inventory")
            with page.expect_navigation():
                page.locator("#pending button:text('dead-letter')").first.click()
            assert redis.xpending(high, "inventory")["pending"] == 1
            [(_, letter)] = redis.xrange(DEAD)
            assert (letter[b"stream"].decode(), letter[b"original_id"].decode()) == (high, first)

            page.goto(f"{base}/services/billing")
            assert page.locator("#lanes").count() == 0
            assert page.locator("#recent td.lane").count() == 0
            browser.close()
