"""The HTML report in a real browser: headless Chromium loads it from disk with the network
features off, must run its render check without a script error or a refused resource, and
takes a screenshot.

Chromium is Debian's ``chromium`` package. When it is missing and the tests run as root with
apt-get available, it is installed (``apt-get update`` then ``apt-get install -y
--no-install-recommends chromium fonts-liberation``); otherwise the tests are skipped with
the reason.
"""

from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from sesbeam.generate import generate_archive
from sesbeam.pipeline.batch import run_batch
from sesbeam.pipeline.report import html_report

pytestmark = pytest.mark.slow

#: Headless, no sandbox (root in containers), and everything that would reach the network
#: in the background turned off.
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-default-apps", "--disable-extensions", "--disable-domain-reliability",
    "--disable-client-side-phishing-detection", "--no-default-browser-check",
    "--metrics-recording-only", "--disable-dev-shm-usage", "--hide-scrollbars",
    "--enable-logging=stderr", "--v=0",
]
INSTALL_TIMEOUT = 1200


def _install_chromium() -> str | None:
    """Install Debian's chromium; the reason it cannot be installed, or None when done."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "not running as root"
    if not shutil.which("apt-get"):
        return "apt-get is not available"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update"], ["apt-get", "install", "-y", "--no-install-recommends",
                                        "chromium", "fonts-liberation"]):
        try:
            done = subprocess.run(cmd, env=env, capture_output=True, text=True,
                                  timeout=INSTALL_TIMEOUT)
        except (OSError, subprocess.TimeoutExpired) as e:
            return f"{' '.join(cmd)} failed: {e}"
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
            return f"{' '.join(cmd)} exited {done.returncode}: {' / '.join(tail)}"
    return None


@pytest.fixture(scope="module")
def chromium() -> str:
    path = shutil.which("chromium")
    if path:
        return path
    why = _install_chromium()
    path = shutil.which("chromium")
    if not path:
        why = why or "no chromium binary after apt-get install"
        pytest.skip(f"Chromium is not installed and could not be installed ({why}); install "
                    "Debian's chromium package (apt-get install chromium) to run the browser "
                    "tests")
    return path


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("browser")
    generate_archive(str(root / "archive"), events=1000, seed=11, bad_records=6)
    out = root / "out"
    run_batch(["--input", str(root / "archive"), "--output", str(out)])
    path = root / "report.html"
    path.write_text(html_report(str(out)), encoding="utf-8")
    return path


def _run(chromium: str, page: Path, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    profile = tmp_path / f"profile-{len(list(tmp_path.glob('profile-*')))}"
    return subprocess.run(
        [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args, page.as_uri()],
        capture_output=True, text=True, timeout=180, cwd=tmp_path)


class _Dom(HTMLParser):
    def __init__(self, text: str):
        super().__init__()
        self.body: dict = {}
        self.charts: dict[str, dict] = {}
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "body":
            self.body = a
        if "data-chart" in a:
            self.charts[a["data-chart"]] = a


def _console(stderr: str) -> list[str]:
    """The page's console messages (script errors, refused resources) from Chromium's log."""
    return [line for line in stderr.splitlines() if ":CONSOLE" in line
            or "Refused to" in line or "Uncaught" in line]


def _dump(chromium: str, page: Path, tmp_path: Path) -> tuple[_Dom, list[str]]:
    done = _run(chromium, page, tmp_path, "--dump-dom")
    assert done.returncode == 0, done.stderr[-2000:]
    return _Dom(done.stdout), _console(done.stderr)


def test_report_renders_without_errors(chromium, report, tmp_path):
    dom, console = _dump(chromium, report, tmp_path)
    assert console == []
    body = dom.body
    assert body.get("data-status") == "ok", body.get("data-errors")
    charts = int(body["data-charts"])
    assert charts == len(dom.charts) >= 14
    assert int(body["data-charts-rendered"]) == charts
    assert body["data-charts-empty"] == "0"  # this run has data for every chart
    assert all(a.get("data-rendered") == "true" for a in dom.charts.values())


def test_report_screenshot(chromium, report, tmp_path):
    shot = tmp_path / "report.png"
    done = _run(chromium, report, tmp_path, f"--screenshot={shot}", "--window-size=1280,2000")
    assert done.returncode == 0 and shot.exists(), done.stderr[-2000:]
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (1280, 2000)
    # A blank or error page compresses to a few KB; the charts and text do not.
    assert len(data) > 60_000, len(data)
    assert _console(done.stderr) == []


def test_render_check_catches_broken_charts_and_script_errors(chromium, report, tmp_path):
    """The in-page check is not a rubber stamp: it fails a chart without marks and a page
    whose script throws."""
    page = report.read_text(encoding="utf-8")
    broken = tmp_path / "broken.html"
    # One chart loses its marks but still claims to have data.
    start = page.index('data-chart="top-volume"')
    end = page.index("</svg>", start)
    broken.write_text(page[:start] + page[start:end].replace('data-mark="1"', "") + page[end:],
                      encoding="utf-8")
    dom, _ = _dump(chromium, broken, tmp_path)
    assert dom.body.get("data-status") == "error"
    assert "chart not rendered: top-volume" in dom.body.get("data-errors", "")
    assert dom.charts["top-volume"]["data-rendered"] == "false"

    # A script that throws (the page's policy has to allow it first).
    throwing = tmp_path / "throwing.html"
    csp = re.search(r'<meta http-equiv="Content-Security-Policy"[^>]*>', page).group(0)
    throwing.write_text(page.replace(csp, "").replace(
        "<main>", "<main><script>undefinedFunction();</script>", 1), encoding="utf-8")
    dom, console = _dump(chromium, throwing, tmp_path)
    assert dom.body.get("data-status") == "error"
    assert "undefinedFunction" in dom.body.get("data-errors", "")
    assert any("Uncaught" in line for line in console)


def test_policy_blocks_any_other_script(chromium, report, tmp_path):
    page = report.read_text(encoding="utf-8")
    injected = tmp_path / "injected.html"
    injected.write_text(page.replace("<main>", "<main><script>document.title='pwned'</script>",
                                     1), encoding="utf-8")
    done = _run(chromium, injected, tmp_path, "--dump-dom")
    assert "<title>pwned</title>" not in done.stdout
    assert any("Content Security Policy" in line or "Refused to" in line
               for line in _console(done.stderr))
    assert _Dom(done.stdout).body.get("data-status") == "ok"  # the page's own checks still run
