"""Anonymization and pseudonymization of tabular site data.

A site's policy (TOML) gives each column a role: direct identifiers are dropped or replaced by
keyed pseudonyms, quasi-identifiers are recoded and generalized by Mondrian partitioning until
every group meets k-anonymity, l-diversity and t-closeness, sensitive and other columns are
kept. `anonymize_table` does all of it and reports what it achieved; `detect_columns` and
`suggest_policy` find identifying columns from headers and values.
"""

from privacy.anonymization.detect import Finding, detect_columns, suggest_policy
from privacy.anonymization.generalize import range_midpoints
from privacy.anonymization.pipeline import AnonymizationResult, anonymize_table
from privacy.anonymization.policy import ColumnRule, Policy, Targets, load_policy, parse_policy
from privacy.anonymization.pseudonymize import load_or_create_key, pseudonymize_series
from privacy.anonymization.table_io import read_table_csv

__all__ = [
    "AnonymizationResult",
    "ColumnRule",
    "Finding",
    "Policy",
    "Targets",
    "anonymize_table",
    "detect_columns",
    "load_or_create_key",
    "load_policy",
    "parse_policy",
    "pseudonymize_series",
    "range_midpoints",
    "read_table_csv",
    "suggest_policy",
]
