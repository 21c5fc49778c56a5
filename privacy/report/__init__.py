"""The privacy-budget report of a run: JSON for machines, HTML for people, signed.

`write_report` builds it from the run directory's ledgers and writes it; `verify_run` checks
that ledgers, report and signature still agree. See docs/report-schema.md.
"""

from privacy.report.model import SCHEMA_VERSION, build_report
from privacy.report.signing import load_or_create_signing_key
from privacy.report.verify import verify_run
from privacy.report.write import write_report

__all__ = [
    "SCHEMA_VERSION",
    "build_report",
    "load_or_create_signing_key",
    "verify_run",
    "write_report",
]
