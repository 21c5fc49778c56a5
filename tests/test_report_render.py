"""report.html and report.md: self-contained, saying what report.json says; and a real render.

The screenshot test renders report.html in headless Chromium (Debian package `chromium`)
through scripts/screenshot_report.sh and skips, saying so, where Chromium is not installed.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
from markupsafe import escape
from report_run import clinic_anonymization, make_run

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
    assert str(escape(report["summary"]["headline"])) in html
    for site in report["sample_level_dp"]["sites"]:
        for row in site["rounds"]:
            assert f"{row['epsilon_cumulative']:.2f}" in html
    assert "site-1" in html and "round 3 (budget-exhausted)" in html
    assert "LOWER bound" in html
    assert "Epsilon lower bound at 95% confidence" in html
    for site in report["sample_level_dp"]["sites"]:
        assert f"<strong>{site['gdp_mu']:.2f}</strong>" in html  # mu beside (epsilon, delta)
    for name in ("epsilon.png", "utility.png", "audit-roc.png"):
        assert (run / "plots" / name).read_bytes().startswith(b"\x89PNG")


def test_markdown_has_summary_and_tables(written):
    run, report = written
    md = (run / "report.md").read_text()
    assert md.startswith("# Privacy report: run `run` (consistent)")
    assert f"**{report['summary']['headline']}**" in md
    assert "| sites | epsilon | epsilon (RDP) | mu (GDP) |" in md and "LOWER bound" in md
    audit = report["audit"]
    assert f"epsilon lower bound {audit['eps_lb']:.2f} at 95% confidence" in md


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


class VisibleRows(HTMLParser):
    """Counts what a reviewer sees without unfolding anything: table rows and folded-section
    titles outside closed <details> (nested ones included), and the text shown."""

    def __init__(self) -> None:
        super().__init__()
        self.closed_depth = 0  # how many closed <details> enclose the current position
        self.stack: list[bool] = []  # per open <details>: is it closed?
        self.rows = self.summaries = 0
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag == "details":
            closed = "open" not in dict(attrs)
            self.stack.append(closed)
            self.closed_depth += closed
        elif tag == "summary" and self.closed_depth <= (1 if self.stack[-1] else 0):
            self.summaries += 1
        elif tag == "tr" and not self.closed_depth:
            self.rows += 1

    def handle_endtag(self, tag: str) -> None:
        if tag == "details":
            self.closed_depth -= self.stack.pop()

    def handle_data(self, data: str) -> None:
        if not self.closed_depth:
            self.text.append(data)


def visible(html: str) -> VisibleRows:
    parser = VisibleRows()
    parser.feed(html)
    return parser


# What "a page a reviewer can scroll" means here, whatever the number of sites: at most this
# many table rows and folded-section titles on screen before anything is unfolded, and a
# file that opens quickly (plots included).
MAX_VISIBLE_ROWS, MAX_VISIBLE_SUMMARIES, MAX_BYTES = 70, 15, 400_000


@pytest.fixture(scope="module")
def many_sites(tmp_path_factory: pytest.TempPathFactory) -> dict[int, tuple[str, str]]:
    """Reports of a 20- and a 100-site run (4 noise schedules, every site anonymizing)."""
    base = tmp_path_factory.mktemp("many")
    anonymization = clinic_anonymization({"person": "national_id", "per_person": "first"})
    audit = loss_threshold_audit([0.1] * 150 + [0.9] * 50, [0.5] * 100 + [1.0] * 100, 1e-5)
    out = {}
    for sites in (20, 100):
        run = make_run(
            base / f"run-{sites}",
            sites=sites,
            rounds=3,
            schedules=4,
            prior_rounds=1,
            anonymization=anonymization,
        )
        write_report(run, signing_key_path=base / "k", audit=audit, formats=("html", "md"))
        out[sites] = ((run / "report.html").read_text(), (run / "report.md").read_text())
    return out


def test_a_100_site_report_stays_a_page_to_scroll(many_sites):
    html, _ = many_sites[100]
    shown = visible(html)
    assert shown.rows <= MAX_VISIBLE_ROWS, shown.rows
    assert shown.summaries <= MAX_VISIBLE_SUMMARIES, shown.summaries
    assert len(html.encode()) <= MAX_BYTES, len(html.encode())
    # What is on screen does not grow with the sites: 20 and 100 sites show the same rows.
    assert shown.rows == visible(many_sites[20][0]).rows
    assert shown.summaries == visible(many_sites[20][0]).summaries


def test_every_site_is_still_named_on_the_page(many_sites):
    html, md = many_sites[100]
    on_screen = " ".join(visible(html).text)
    for i in range(100):
        name = re.compile(rf"\bsite-{i}(?!\d)")
        assert name.search(on_screen), f"site-{i} not on the unfolded page"
        assert name.search(md), f"site-{i} not in report.md"
