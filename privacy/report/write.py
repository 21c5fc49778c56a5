"""Writing a run's report: report.json, report.sig, report.html (+ report.md), plots/*.png.

Every file is written atomically; report.json and its signature come last, so a crash midway
leaves either the previous signed report or none, never a signed half. report.json lists the
SHA-256 of every rendered file (the HTML, the Markdown, each plot), so the one signature
covers what a reviewer reads first as well. The JSON bytes are fixed here once (indented,
ASCII, no NaN) because the signature covers them exactly.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from privacy.atomic import atomic_write_bytes
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
    rendered: dict[str, bytes] = {}
    if "html" in formats:
        plots = all_plots(report)
        rendered.update({f"plots/{name}": png for name, png in plots.items()})
        rendered["report.html"] = render_html(report, plots).encode("utf-8")
    if "md" in formats:
        rendered["report.md"] = render_md(report).encode("utf-8")
    report["integrity"]["files_sha256"] = {
        name: hashlib.sha256(data).hexdigest() for name, data in sorted(rendered.items())
    }
    for name, data in rendered.items():
        atomic_write_bytes(run_dir / name, data)
    data = report_bytes(report)
    atomic_write_bytes(run_dir / "report.json", data)
    atomic_write_bytes(run_dir / "report.sig", sign(key, data))
    return report
