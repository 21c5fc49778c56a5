"""report.html and report.md: self-contained, saying what report.json says; and a real render.

The screenshot test renders report.html in headless Chromium (Debian package `chromium`)
through scripts/screenshot_report.sh and skips, saying so, where Chromium is not installed.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from report_run import make_run

from privacy.audit import loss_threshold_audit
from privacy.report import write_report

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "screenshot_report.sh"


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    base = tmp_path_factory.mktemp("render")
    run = make_run(base / "run", sites=2, rounds=3, refuse_round=3)
    audit = loss_threshold_audit([0.1] * 150 + [0.9] * 50, [0.5] * 100 + [1.0] * 100, 1e-5)
    report = write_report(
        run, signing_key_path=base / "signing.key", audit=audit, formats=("html", "md")
    )
    return run, report


def test_html_is_self_contained_and_shows_the_numbers(written):
    run, report = written
    html = (run / "report.html").read_text()
    assert not re.search(r"""(src|href)\s*=\s*["'](?!data:|#)""", html)
    assert "<script" not in html and "http://" not in html and "https://" not in html
    assert html.count("data:image/png;base64,") == 3  # epsilon, utility, audit ROC
    assert report["summary"]["headline"] in html
    for site in report["sample_level_dp"]["sites"]:
        for row in site["rounds"]:
            assert f"{row['epsilon_cumulative']:.2f}" in html
    assert "site-1" in html and "round 3 (budget-exhausted)" in html
    assert "LOWER bound" in html
    for name in ("epsilon.png", "utility.png", "audit-roc.png"):
        assert (run / "plots" / name).read_bytes().startswith(b"\x89PNG")


def test_markdown_has_summary_and_tables(written):
    run, report = written
    md = (run / "report.md").read_text()
    assert md.startswith("# Privacy report: run `run` (consistent)")
    assert f"**{report['summary']['headline']}**" in md
    assert "| site | epsilon |" in md and "LOWER bound" in md


def test_report_renders_in_headless_chromium(written, tmp_path):
    if shutil.which("chromium") is None and shutil.which("chromium-browser") is None:
        pytest.skip("chromium not installed (Debian: apt-get install -y chromium)")
    run, _ = written
    out = tmp_path / "report.png"
    subprocess.run(
        ["bash", str(SCRIPT), str(run / "report.html"), str(out), "1280,1600"],
        check=True,
        timeout=120,
        capture_output=True,
    )
    data = out.read_bytes()
    assert data.startswith(b"\x89PNG")
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (width, height) == (1280, 1600)
    assert len(data) > 50_000  # a rendered page, not a blank one
