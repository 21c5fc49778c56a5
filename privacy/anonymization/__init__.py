"""Cleansing, anonymization and pseudonymization of tabular site data.

A site's policy (TOML) gives every column a role and may declare how the raw table is
cleansed first. `clean_table` applies the [cleaning] rules (missing values, values outside
their domain, malformed numbers, duplicate records, several records of one person) and counts
every change. `anonymize_table` cleanses, then drops or replaces direct identifiers by keyed
pseudonyms, recodes and generalizes quasi-identifiers by Mondrian partitioning until every
group meets k-anonymity, l-diversity and t-closeness, keeps sensitive and other columns,
shuffles the rows and reports what it achieved. `detect_columns` and `suggest_policy` draft
roles from headers and values.
"""

from privacy.anonymization.cleaning import CleaningResult, clean_table
from privacy.anonymization.detect import Finding, detect_columns, suggest_policy
from privacy.anonymization.generalize import range_midpoints
from privacy.anonymization.pipeline import AnonymizationResult, anonymize_table
from privacy.anonymization.policy import (
    Cleaning,
    CleaningRule,
    ColumnRule,
    Policy,
    Targets,
    load_policy,
    parse_policy,
)
from privacy.anonymization.pseudonymize import (
    load_or_create_key,
    normalize_identifier,
    pseudonymize_series,
)
from privacy.anonymization.table_io import read_table_csv

__all__ = [
    "AnonymizationResult",
    "Cleaning",
    "CleaningResult",
    "CleaningRule",
    "ColumnRule",
    "Finding",
    "Policy",
    "Targets",
    "anonymize_table",
    "clean_table",
    "detect_columns",
    "load_or_create_key",
    "load_policy",
    "normalize_identifier",
    "parse_policy",
    "pseudonymize_series",
    "range_midpoints",
    "read_table_csv",
    "suggest_policy",
]
