"""report.html: the report for people, one self-contained file.

Inline CSS, plots as base64 PNG data URIs, no scripts, fonts or links to fetch: it opens the
same offline, in a mail attachment or an archive years later, and prints cleanly. The page
shows only what report.json holds (plus the plots drawn from it), so the two cannot disagree.
"""

from __future__ import annotations

import base64
import math
from typing import Any

from privacy.report.template import REPORT_HTML

MISSING = "\N{EN DASH}"


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and not math.isfinite(value))


def _num(value: Any, digits: int = 2) -> str:
    if _missing(value):
        return MISSING
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _eps(value: Any) -> str:
    return _num(value, 2) if not isinstance(value, int) or isinstance(value, bool) else f"{value}"


def _delta(value: Any) -> str:
    return MISSING if _missing(value) else f"{value:g}".replace("e-0", "e-")


def _pct(value: Any, digits: int = 1) -> str:
    return MISSING if _missing(value) else f"{100 * value:.{digits}f}%"


def _dash(value: Any) -> str:
    return MISSING if value is None else str(value)


def max_claimed_epsilon(report: dict[str, Any]) -> float | None:
    """The largest accounted sample-level epsilon of any site (what an audit is compared to)."""
    values = [s["epsilon"] for s in report["sample_level_dp"]["sites"] if s["epsilon"] is not None]
    return max(values) if values and report["sample_level_dp"]["enabled"] else None


def render_html(report: dict[str, Any], plots: dict[str, bytes]) -> str:
    """The HTML page for `report`, with `plots` (file name -> PNG bytes) embedded."""
    import jinja2

    env = jinja2.Environment(
        autoescape=True,
        undefined=jinja2.ChainableUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(num=_num, eps=_eps, delta=_delta, pct=_pct, dash=_dash)
    embedded = {name: base64.b64encode(data).decode("ascii") for name, data in plots.items()}
    for name in ("epsilon.png", "utility.png", "audit-roc.png"):
        embedded.setdefault(name, "")
    return env.from_string(REPORT_HTML).render(
        r=report, plots=embedded, max_claimed=max_claimed_epsilon(report)
    )
