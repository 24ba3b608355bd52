"""The page in a real headless browser (Debian's chromium + chromedriver, driven by Selenium; nothing is
downloaded at run time): search, details, generate a trace with log lines and metrics ticked, watch
progress reach done, download the
file (sha256 checked), open it in a stand-in Perfetto UI over the documented postMessage protocol,
and save a screenshot.

Set ``TRACE_WORKER_SCREENSHOT=docs/gateway.png`` to also write the screenshot there (docs/GATEWAY.md).
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests.engine.decode_logs import decode_logs
from tests.gateway.conftest import Stack
from tests.support.gateway_process import run_gateway

webdriver = pytest.importorskip(
    "selenium.webdriver", reason="selenium is in requirements.lock (scripts/dev setup)"
)
from selenium.webdriver.chrome.options import Options  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402
from selenium.webdriver.support.ui import Select  # noqa: E402

from tests.support import leaks  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="chromium and chromedriver are not installed (scripts/dev setup installs Debian's chromium and "
    "chromium-driver when it runs as root; otherwise: apt-get install chromium chromium-driver)",
)

T = TypeVar("T")

#: A stand-in for ui.perfetto.dev: answers PING with PONG and shows what it was sent, as the real UI
#: takes {perfetto: {buffer, title}} (perfetto.dev/docs/visualization/deep-linking-to-perfetto-ui).
FAKE_PERFETTO = b"""<!doctype html><html><head><title>fake perfetto</title></head><body>waiting
<script>
window.addEventListener("message", async (e) => {
  if (e.data === "PING") { e.source.postMessage("PONG", e.origin); return; }
  if (!e.data || !e.data.perfetto) return;
  const digest = await crypto.subtle.digest("SHA-256", e.data.perfetto.buffer);
  const hex = [...new Uint8Array(digest)].map((b) => b.toString(16).padStart(2, "0")).join("");
  const p = e.data.perfetto;
  document.body.textContent = JSON.stringify({title: p.title, size: p.buffer.byteLength, sha256: hex});
  document.title = "loaded";
});
</script></body></html>"""


@pytest.fixture
def fake_perfetto() -> Iterator[str]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(FAKE_PERFETTO)))
            self.end_headers()
            self.wfile.write(FAKE_PERFETTO)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[tuple[WebDriver, Path]]:
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    options = Options()
    assert CHROMIUM is not None and CHROMEDRIVER is not None
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--disable-popup-blocking", "--window-size=1440,1250", "--no-first-run"):  # fmt: skip
        options.add_argument(arg)
    options.add_experimental_option(
        "prefs", {"download.default_directory": str(downloads), "download.prompt_for_download": False}
    )
    before = leaks.pids()
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    try:
        driver.execute_cdp_cmd(
            "Page.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)}
        )
        yield driver, downloads
    finally:
        driver.quit()
        # Chromium's crash handler detaches from the browser and leaves on its own schedule (late on a
        # busy machine); it belongs to this browser, so it goes with it.
        leaks.kill_all({pid: cmd for pid, cmd in leaks.new_marked(before).items() if "crashpad" in cmd})


def _until(what: str, check: Callable[[], T | None], timeout: float = 120.0) -> T:
    """Poll the page until ``check`` gives a value (observing the page; not a synchronisation sleep)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_page_search_generate_download_open(
    stack: Stack, browser: tuple[WebDriver, Path], fake_perfetto: str, tmp_path: Path
) -> None:
    driver, downloads = browser
    env = {**stack.env, "TRACE_WORKER_GATEWAY_PERFETTO_ORIGIN": fake_perfetto}
    small = stack.lake.processes[0]
    with run_gateway(env) as gw:
        driver.get(gw.url)

        def rows() -> list[Any]:
            return list(driver.find_elements(By.CSS_SELECTOR, "#process-table tbody tr[data-process-id]"))

        _until("the process table", lambda: len(rows()) == len(stack.lake.processes))

        driver.find_element(By.ID, "search").send_keys(small.process_id[:8])
        _until("the search to narrow the table", lambda: len(rows()) == 1)
        row = rows()[0]
        assert row.get_attribute("data-process-id") == small.process_id
        row.click()

        def stat(name: str) -> str:
            return str(driver.find_element(By.CSS_SELECTOR, f'#stats dd[data-stat="{name}"]').text)

        _until(
            "the statistics",
            lambda: driver.find_elements(By.CSS_SELECTOR, '#stats dd[data-stat="thread spans"]'),
        )
        assert stat("thread spans") == f"{small.thread_span_count:,}"
        assert stat("log entries") == f"{small.log_entry_count:,}"
        log_cells = "#logs tbody tr td[class^='lvl-']"
        _until("log lines", lambda: len(driver.find_elements(By.CSS_SELECTOR, log_cells)) > 10)

        Select(driver.find_element(By.ID, "span-types")).select_by_value("both")
        driver.find_element(By.ID, "with-logs").click()
        driver.find_element(By.ID, "with-metrics").click()
        driver.find_element(By.ID, "generate").click()
        seen: list[float] = []

        def done() -> bool:
            # State and bar read in one script, so they are of the same moment (two reads could see
            # the bar before a status event and the state after it).
            shown, value = driver.execute_script(
                "return [document.getElementById('job-state').textContent,"
                " document.getElementById('progress-bar').value]"
            )
            seen.append(float(value or 0))
            state = str(shown)
            assert state not in ("failed", "dead", "cancelled"), driver.find_element(
                By.ID, "progress-text"
            ).text
            return state == "succeeded"

        _until("the job to succeed", done, timeout=240)
        assert seen[-1] == 100.0 and driver.find_element(By.ID, "result").is_displayed()
        job_id = driver.find_element(By.ID, "job-id").text
        status = stack.http.get(f"/api/traces/{job_id}").json()
        assert driver.find_element(By.ID, "result-sha").text == status["sha256"]
        assert driver.find_element(By.ID, "result-spans").text == f"{status['spans']:,}"

        driver.find_element(By.ID, "download").click()
        target = downloads / f"{job_id}.pftrace"
        _until("the download", lambda: target.exists() and not list(downloads.glob("*.crdownload")))
        data = target.read_bytes()
        assert len(data) == status["size"] and hashlib.sha256(data).hexdigest() == status["sha256"]
        # The ticked boxes reached the request: every log entry and measure of the process is in it.
        got = decode_logs(data)
        assert got.problems == []
        assert len(got.logs) == small.log_entry_count > 0
        assert sum(len(v) for v in got.counters.values()) == small.measure_count > 0
        assert "verified" in driver.find_element(By.ID, "sha-check").text
        _until(
            "the recent jobs list",
            lambda: driver.find_elements(By.CSS_SELECTOR, f'#jobs tr[data-job-id="{job_id}"]'),
        )

        search = driver.find_element(By.ID, "search")
        search.clear()
        search.send_keys(" ")  # all processes again; the selected one stays highlighted
        _until("the whole table", lambda: len(rows()) == len(stack.lake.processes))
        shot = tmp_path / "gateway.png"
        driver.save_screenshot(str(shot))
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
        if os.environ.get("TRACE_WORKER_SCREENSHOT"):
            shutil.copyfile(shot, os.environ["TRACE_WORKER_SCREENSHOT"])

        page = driver.current_window_handle
        driver.find_element(By.ID, "open-perfetto").click()
        _until("the Perfetto window", lambda: len(driver.window_handles) == 2)
        driver.switch_to.window(next(h for h in driver.window_handles if h != page))
        _until("the trace to reach the Perfetto window", lambda: driver.title == "loaded")
        received = json.loads(driver.find_element(By.TAG_NAME, "body").text)
        assert received["size"] == status["size"] and received["sha256"] == status["sha256"]
        assert job_id in received["title"]
