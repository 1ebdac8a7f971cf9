"""The verification report as a user sees it: rendered by headless Chromium, screenshot taken,
no horizontal overflow; and its words and charts checked on a real log.

Chromium is not a dependency of repro: the test installs Debian's 'chromium' as the Slurm lane installs its
packages (root with apt-get, as CI runs), and skips with the reason where it cannot."""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from tests import debian_tools
from repro.report.verification import render_html, render_markdown, write_report
from repro.verify.parsers import parse_files
from repro.verify.verifier import exit_code, verify

LOGS = Path(__file__).parent / "data" / "logs"


def browser() -> str:
    """A headless Chromium: on PATH, or installed from Debian (tests/debian_tools.py), else the test skips."""
    found = next((b for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)
    if found is None:
        why = debian_tools.require("chromium")
        if why:
            pytest.skip(f"no chromium ({why}); the report is still checked as text above")
        found = shutil.which("chromium")
    return found


@pytest.fixture(scope="module")
def result():
    parsed = parse_files([LOGS / "llamafactory_mistral7b_sft_trainer_log.jsonl"])
    return verify("tulu3-8b-dpo", [parsed.records], run_values=[{"total_steps": 8660.0}])


def test_report_words_are_for_users_and_every_decisive_series_is_drawn(result):
    page = render_html(result, exit_code(result))
    text = render_markdown(result, exit_code(result)) + page
    for leak in ("`measure`", "environment key —", "['", "no record or run-level value"):
        assert leak not in text, leak
    assert "Evaluation scores: measured by an evaluation, not by a training log" in text
    assert page.count("<svg") == 2  # loss and learning rate: the lr decided peak-lr, warm-up and total steps
    assert "learning rate: your run vs the published values" in page
    assert "a vertical one is a step" in page
    assert "Dots: the run" not in page


def png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", head[16:24])


def test_report_renders_in_a_headless_browser_without_horizontal_overflow(result, tmp_path):
    BROWSER = browser()
    _, html_path = write_report(result, tmp_path / "report")
    flags = ["--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1280,900"]
    shot = tmp_path / "shot.png"
    subprocess.run([BROWSER, *flags, f"--screenshot={shot}", html_path.as_uri()], check=True, timeout=120,
                   capture_output=True)
    assert png_size(shot) == (1280, 900) and shot.stat().st_size > 20_000  # drawn, not blank
    # the page has no scripts; a copy gets one that records whether anything is wider than the window
    probe = tmp_path / "probe.html"
    probe.write_text(html_path.read_text(encoding="utf-8").replace(
        "</body>", "<script>document.body.setAttribute('data-overflow', "
                   "String(document.documentElement.scrollWidth - window.innerWidth))</script></body>"),
        encoding="utf-8")
    dom = subprocess.run([BROWSER, *flags, "--dump-dom", probe.as_uri()], check=True, timeout=120,
                         capture_output=True, text=True).stdout
    overflow = re.search(r'data-overflow="(-?\d+)"', dom)
    assert overflow is not None and int(overflow.group(1)) <= 0, "the page is wider than a 1280 px window"
