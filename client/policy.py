"""A tabular site's anonymization policy, applied to its rows before any training.

The policy file and the pseudonymization key belong to the site (its own configuration and
state directory). Cleansing runs first (`anonymize_table` cleanses before it anonymizes): DP-SGD
protects one record, so a person entered twice must be merged, or bounded by the policy's
`max_records_per_person`, before any training step sees the rows; the anonymization report
the site sends carries what cleansing changed, and the privacy report turns a bound above one
record into a person-level guarantee. Generalized numeric quasi-identifiers come out as ranges
("40-44"); the model sees their midpoints, so a site's model inputs carry no more than the
released table.
"""

from __future__ import annotations

import pandas as pd

from client.site import Site
from privacy.anonymization import anonymize_table, load_or_create_key, load_policy, range_midpoints
from privacy.errors import FedVaultError
from tasks.tabular import Schema


def apply_site_policy(table: pd.DataFrame, site: Site, schema: Schema) -> tuple[pd.DataFrame, dict]:
    """The site's cleansed and released table (ready for the shared schema) and its report.

    A table the policy refuses (a cell that needs cleansing the policy does not declare, a
    column without a role, a target it cannot meet) stops the site with the policy's one line,
    prefixed with the site's name: in a simulation of many sites, the operator sees which one.
    """
    policy = load_policy(site.policy_path)
    try:
        result = anonymize_table(table, policy, load_or_create_key(site.state_dir))
    except FedVaultError as exc:
        raise FedVaultError(f"{site.name}: {exc}") from None
    released = result.table.copy()
    numeric = {f.name for f in schema.features if f.kind == "numeric"}
    for column, rule in result.report["columns"].items():
        if rule.get("role") == "quasi" and column in numeric and column in released:
            released[column] = range_midpoints(released[column]).astype(str)
    return released, result.report
