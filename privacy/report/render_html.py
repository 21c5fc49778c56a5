"""report.html: the report for people, one self-contained file.

Inline CSS, plots as base64 PNG data URIs, no scripts, fonts or links to fetch: it opens the
same offline, in a mail attachment or an archive years later, and prints cleanly. The page
shows only what report.json holds (plus the plots drawn from it), so the two cannot disagree.
Sites whose rows read the same share one row (privacy.report.rows), and per-site detail sits
in <details> folded beyond FOLD_ABOVE sites, so a 100-site report stays a page to scroll.
"""

from __future__ import annotations

import base64
from typing import Any

from privacy.report import rows
from privacy.report.template import REPORT_HTML


def render_html(report: dict[str, Any], plots: dict[str, bytes]) -> str:
    """The HTML page for `report`, with `plots` (file name -> PNG bytes) embedded."""
    import jinja2

    env = jinja2.Environment(
        autoescape=True,
        undefined=jinja2.ChainableUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(
        num=rows.num, eps=rows.eps, delta=rows.delta, pct=rows.pct, dash=rows.dash, names=rows.join
    )
    embedded = {name: base64.b64encode(data).decode("ascii") for name, data in plots.items()}
    for name in ("epsilon.png", "utility.png", "audit-roc.png"):
        embedded.setdefault(name, "")
    sites = report["sample_level_dp"]["sites"]
    return env.from_string(REPORT_HTML).render(
        r=report,
        plots=embedded,
        max_claimed=rows.max_claimed_epsilon(report),
        site_groups=rows.grouped(sites, rows.site_row),
        round_groups=rows.grouped([s for s in sites if s["rounds"]], rows.round_rows),
        floor_groups=rows.grouped(sites, rows.floor_row),
        anonymization_groups=rows.grouped(report["anonymization"], rows.anonymization_row),
        column_groups=rows.grouped(report["anonymization"], rows.column_rows),
        fold=len(report["run"]["sites"]) > rows.FOLD_ABOVE,
    )
