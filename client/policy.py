"""A tabular site's anonymization policy, applied to its rows before any training.

The policy file and the pseudonymization key belong to the site (its own configuration and
state directory). Generalized numeric quasi-identifiers come out as ranges ("40-44"); the
model sees their midpoints, so a site's model inputs carry no more than the released table.
"""

from __future__ import annotations

import pandas as pd

from client.site import Site
from privacy.anonymization import anonymize_table, load_or_create_key, load_policy, range_midpoints
from tasks.tabular import Schema


def apply_site_policy(table: pd.DataFrame, site: Site, schema: Schema) -> tuple[pd.DataFrame, dict]:
    """The site's released table (ready for the shared schema) and the anonymization report."""
    policy = load_policy(site.policy_path)
    result = anonymize_table(table, policy, load_or_create_key(site.state_dir))
    released = result.table.copy()
    numeric = {f.name for f in schema.features if f.kind == "numeric"}
    for column, rule in result.report["columns"].items():
        if rule.get("role") == "quasi" and column in numeric and column in released:
            released[column] = range_midpoints(released[column]).astype(str)
    return released, result.report
