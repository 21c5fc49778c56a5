"""Writing a run's report: report.json, report.sig, report.html (+ report.md), plots/*.png.

Every file is written atomically; report.json and its signature come last, so a crash midway
leaves either the previous signed report or none, never a signed half. The JSON bytes are
fixed here once (indented, ASCII, no NaN) because the signature covers them exactly.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from privacy.atomic import atomic_write_bytes, atomic_write_text
from privacy.report.model import build_report
from privacy.report.signing import load_or_create_signing_key, sign, signer_record

FORMATS = ("html", "md")


def report_bytes(report: dict[str, Any]) -> bytes:
    """The exact bytes of report.json for `report` (what the signature covers)."""
    return (json.dumps(report, indent=2, ensure_ascii=True, allow_nan=False) + "\n").encode()


def write_report(
    run_dir: Path,
    *,
    signing_key_path: Path,
    audit: dict[str, Any] | None = None,
    formats: tuple[str, ...] = ("html",),
) -> dict[str, Any]:
    """Build the run's report from its ledgers, write it signed, and return it.

    Always writes report.json and report.sig; `formats` adds report.html with plots/*.png
    ("html") and report.md ("md"). The signing key is created at `signing_key_path` if absent.
    """
    from privacy.report.plots import all_plots
    from privacy.report.render_html import render_html
    from privacy.report.render_md import render_md

    unknown = sorted(set(formats) - set(FORMATS))
    if unknown:
        raise ValueError(f"unknown report formats {unknown}; known: {FORMATS}")
    run_dir = Path(run_dir)
    key = load_or_create_signing_key(signing_key_path)
    report = build_report(run_dir, audit=audit, signer=signer_record(key.public_key()))
    data = report_bytes(report)
    if "html" in formats:
        plots = all_plots(report)
        for name, png in plots.items():
            atomic_write_bytes(run_dir / "plots" / name, png)
        atomic_write_text(run_dir / "report.html", render_html(report, plots))
    if "md" in formats:
        atomic_write_text(run_dir / "report.md", render_md(report))
    atomic_write_bytes(run_dir / "report.json", data)
    atomic_write_bytes(run_dir / "report.sig", sign(key, data))
    return report
