"""A site's anonymization policy: which column plays which role, and the targets to reach.

The policy is the contract a site operator signs off on, so it is parsed strictly: every key
is known, every value has the right type and range, and a mistake is one clear line naming the
key. It never adapts to the data; checking it against a table happens in the pipeline.

TOML shape::

    [targets]
    k = 5                     # every record shares its quasi-identifiers with >= k-1 others
    l = 2                     # optional: l-diversity of each sensitive column
    l_kind = "distinct"       # or "entropy"
    t = 0.3                   # optional: t-closeness (earth mover's distance)
    max_suppression = 0.05    # fraction of records that may be removed

    [columns.email]
    role = "identifier"       # identifier | quasi | sensitive | keep
    action = "pseudonymize"   # identifiers: drop | pseudonymize

    [cleaning]                # optional: how the raw table is cleansed first
    missing_values = ["n/a"]  # cells that mean "missing", besides empty ones
    duplicates = "drop"       # exact duplicate records: drop | keep
    person = "email"          # records sharing this column belong to one person
    per_person = "first"      # first | merge | bound (with max_records_per_person = N)

    [cleaning.columns.income]
    missing = "median"        # drop | keep | median | mean | mode | constant | category
    min = 0                   # with max and/or categories = [...]: the declared domain
    outside = "clip"          # values outside it: drop | clip | other
    malformed = "drop"        # non-numbers in a numeric column: drop | missing

Every column of a table needs a role (checked in `cleaning.check_columns`): a column the
operator did not think about is refused, never released because no detector flagged it.
"""

from __future__ import annotations

import itertools
import math
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from privacy.errors import FedVaultError

ROLES = ("identifier", "quasi", "sensitive", "keep")
IDENTIFIER_ACTIONS = ("drop", "pseudonymize")
QUASI_TYPES = ("numeric", "date", "zip", "category")
VALUE_TYPES = ("numeric", "category")
DATE_GRANULARITIES = ("day", "month", "year")
L_KINDS = ("distinct", "entropy")
DISTANCES = ("equal", "ordered")

# Generalization keys of a quasi-identifier, and the type each one implies.
_QUASI_KEY_TYPES = {
    "width": "numeric",
    "bins": "numeric",
    "top": "numeric",
    "bottom": "numeric",
    "date": "date",
    "prefix": "zip",
    "hierarchy": "category",
    "min_count": "category",
}
_ALLOWED_KEYS = {
    "identifier": {"role", "action"},
    "quasi": {"role", "type", "fixed", *_QUASI_KEY_TYPES},
    "sensitive": {"role", "type", "distance", "order"},
    "keep": {"role", "type"},
}
_TARGET_KEYS = {"k", "l", "l_kind", "t", "max_suppression"}

MISSING_RULES = ("drop", "keep", "median", "mean", "mode", "constant", "category")
OUTSIDE_RULES = ("drop", "clip", "other")
MALFORMED_RULES = ("drop", "missing")
DUPLICATE_RULES = ("drop", "keep")
PER_PERSON_RULES = ("first", "merge", "bound")
MISSING_CATEGORY = "missing"
"""The category an empty cell becomes under missing = "category" unless `fill` names another."""
_CLEANING_KEYS = {
    "missing_values",
    "duplicates",
    "person",
    "per_person",
    "max_records_per_person",
    "columns",
}
_CLEANING_COLUMN_KEYS = {"missing", "fill", "min", "max", "categories", "outside", "malformed"}


@dataclass(frozen=True)
class ColumnRule:
    """What to do with one column. Unset options are None (or empty)."""

    name: str
    role: str
    action: str | None = None
    type: str | None = None
    fixed: bool = False
    width: float | None = None
    bins: tuple[float, ...] = ()
    top: float | None = None
    bottom: float | None = None
    date: str | None = None
    prefix: int | None = None
    hierarchy: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    min_count: int | None = None
    distance: str | None = None
    order: tuple[str, ...] = ()


@dataclass(frozen=True)
class Targets:
    """Privacy targets every released equivalence class must meet."""

    k: int
    l: int | None = None  # noqa: E741 -- the letter of l-diversity
    l_kind: str = "distinct"
    t: float | None = None
    max_suppression: float = 0.0

    def describe(self) -> str:
        """The targets in words, e.g. 'k=5, l=2 (distinct)'."""
        parts = [f"k={self.k}"]
        if self.l is not None:
            parts.append(f"l={self.l} ({self.l_kind})")
        if self.t is not None:
            parts.append(f"t={self.t:g}")
        return ", ".join(parts)


@dataclass(frozen=True)
class CleaningRule:
    """How one column is cleansed. Unset options are None (or empty)."""

    name: str
    missing: str | None = None
    fill: str | float | None = None
    minimum: float | None = None
    maximum: float | None = None
    categories: tuple[str, ...] = ()
    outside: str | None = None
    malformed: str | None = None

    @property
    def numeric(self) -> bool:
        """True when the rule treats the column as numbers (a range, a median or a mean)."""
        return (
            self.minimum is not None
            or self.maximum is not None
            or self.missing in ("median", "mean")
        )


@dataclass(frozen=True)
class Cleaning:
    """The policy's [cleaning] table; the defaults clean nothing and refuse what needs it."""

    columns: Mapping[str, CleaningRule] = field(default_factory=dict)
    missing_values: tuple[str, ...] = ()
    duplicates: str | None = None
    person: str | None = None
    per_person: str | None = None
    max_records_per_person: int | None = None
    declared: bool = False


@dataclass(frozen=True)
class Policy:
    """A validated policy: one rule per named column, the targets and the cleaning rules."""

    columns: Mapping[str, ColumnRule]
    targets: Targets
    source: str = "<policy>"
    cleaning: Cleaning = field(default_factory=Cleaning)

    def names(self, role: str) -> list[str]:
        """Columns with `role`, in policy order."""
        return [name for name, rule in self.columns.items() if rule.role == role]


def load_policy(path: str | os.PathLike[str]) -> Policy:
    """Read and validate a policy TOML file."""
    source = str(path)
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise FedVaultError(f"policy file {source} does not exist") from None
    except OSError as exc:
        raise FedVaultError(f"cannot read policy file {source}: {exc.strerror or exc}") from exc
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise FedVaultError(f"policy file {source} is not valid UTF-8") from None
    except tomllib.TOMLDecodeError as exc:
        raise FedVaultError(f"policy file {source} is not valid TOML: {exc}") from None
    return parse_policy(data, source)


def parse_policy(data: Mapping[str, Any], source: str = "<policy>") -> Policy:
    """Validate a policy given as a mapping (the parsed TOML)."""
    _no_unknown_keys(data, {"targets", "columns", "cleaning"}, source, "top level")
    targets_raw = data.get("targets")
    if not isinstance(targets_raw, Mapping):
        raise FedVaultError(f"{source}: missing [targets] table (at least k)")
    columns_raw = data.get("columns")
    if not isinstance(columns_raw, Mapping) or not columns_raw:
        raise FedVaultError(f"{source}: missing or empty [columns] table")
    columns = {}
    for name, spec in columns_raw.items():
        if not isinstance(spec, Mapping):
            raise FedVaultError(f"{source}: columns.{name} must be a table")
        columns[name] = _parse_column(name, spec, f"{source}: columns.{name}")
    targets = _parse_targets(targets_raw, f"{source}: targets")
    if (targets.l is not None or targets.t is not None) and not any(
        rule.role == "sensitive" for rule in columns.values()
    ):
        raise FedVaultError(
            f'{source}: targets l and t need at least one column with role = "sensitive"'
        )
    cleaning = Cleaning()
    if "cleaning" in data:
        cleaning = _parse_cleaning(data["cleaning"], columns, source)
    return Policy(columns=columns, targets=targets, source=source, cleaning=cleaning)


def _no_unknown_keys(spec: Mapping[str, Any], allowed: set[str], source: str, where: str) -> None:
    unknown = sorted(set(spec) - allowed)
    if unknown:
        raise FedVaultError(
            f"{source}: unknown key {unknown[0]!r} in {where} "
            f"(allowed: {', '.join(sorted(allowed))})"
        )


def _parse_targets(spec: Mapping[str, Any], where: str) -> Targets:
    _no_unknown_keys(spec, _TARGET_KEYS, where.split(":")[0], "[targets]")
    if "k" not in spec:
        raise FedVaultError(f"{where}: k is required")
    k = _integer(spec["k"], f"{where}.k", minimum=1)
    l_value = None if "l" not in spec else _integer(spec["l"], f"{where}.l", minimum=1)
    l_kind = _choice(spec.get("l_kind", "distinct"), L_KINDS, f"{where}.l_kind")
    t = None
    if "t" in spec:
        t = _number(spec["t"], f"{where}.t")
        if not 0 <= t <= 1:
            raise FedVaultError(f"{where}.t must be between 0 and 1, got {t:g}")
    suppression = _number(spec.get("max_suppression", 0.0), f"{where}.max_suppression")
    if not 0 <= suppression < 1:
        raise FedVaultError(f"{where}.max_suppression must be in [0, 1), got {suppression:g}")
    return Targets(k=k, l=l_value, l_kind=l_kind, t=t, max_suppression=suppression)


def _parse_column(name: str, spec: Mapping[str, Any], where: str) -> ColumnRule:
    if "role" not in spec:
        raise FedVaultError(f"{where}: role is required ({' | '.join(ROLES)})")
    role = _choice(spec["role"], ROLES, f"{where}.role")
    unknown = sorted(set(spec) - _ALLOWED_KEYS[role])
    if unknown:
        raise FedVaultError(
            f"{where}: key {unknown[0]!r} is not allowed for role {role!r} "
            f"(allowed: {', '.join(sorted(_ALLOWED_KEYS[role]))})"
        )
    if role == "identifier":
        if "action" not in spec:
            raise FedVaultError(f'{where}: identifiers need action = "drop" or "pseudonymize"')
        action = _choice(spec["action"], IDENTIFIER_ACTIONS, f"{where}.action")
        return ColumnRule(name, role, action=action)
    if role == "quasi":
        return _parse_quasi(name, spec, where)
    value_type = None
    if "type" in spec:
        value_type = _choice(spec["type"], VALUE_TYPES, f"{where}.type")
    if role == "keep":
        return ColumnRule(name, role, type=value_type)
    distance = None
    if "distance" in spec:
        distance = _choice(spec["distance"], DISTANCES, f"{where}.distance")
    order = _string_list(spec.get("order", []), f"{where}.order")
    if order and distance == "equal":
        raise FedVaultError(f'{where}: order only applies with distance = "ordered"')
    if order and value_type == "numeric":
        raise FedVaultError(f"{where}: order only applies to category columns")
    if order:
        distance = "ordered"
    return ColumnRule(name, role, type=value_type, distance=distance, order=tuple(order))


def _parse_quasi(name: str, spec: Mapping[str, Any], where: str) -> ColumnRule:
    implied = {_QUASI_KEY_TYPES[key] for key in spec if key in _QUASI_KEY_TYPES}
    declared = _choice(spec["type"], QUASI_TYPES, f"{where}.type") if "type" in spec else None
    kinds = implied | ({declared} if declared else set())
    if len(kinds) > 1:
        keys = sorted(key for key in spec if key in _QUASI_KEY_TYPES or key == "type")
        raise FedVaultError(f"{where}: keys {', '.join(keys)} belong to different column types")
    column_type = kinds.pop() if kinds else None
    fixed = spec.get("fixed", False)
    if not isinstance(fixed, bool):
        raise FedVaultError(f"{where}.fixed must be true or false")
    width = None
    if "width" in spec:
        width = _number(spec["width"], f"{where}.width")
        if width <= 0:
            raise FedVaultError(f"{where}.width must be positive, got {width:g}")
    bins: tuple[float, ...] = ()
    if "bins" in spec:
        if width is not None:
            raise FedVaultError(f"{where}: give either width or bins, not both")
        bins = _edges(spec["bins"], f"{where}.bins")
    top = _number(spec["top"], f"{where}.top") if "top" in spec else None
    bottom = _number(spec["bottom"], f"{where}.bottom") if "bottom" in spec else None
    if top is not None and bottom is not None and bottom >= top:
        raise FedVaultError(f"{where}: bottom ({bottom:g}) must be below top ({top:g})")
    for key, edge in (("top", top), ("bottom", bottom)):
        on_edge = edge is None or (
            edge in bins if bins else width is None or float(edge / width).is_integer()
        )
        if not on_edge:
            raise FedVaultError(f"{where}.{key} ({edge:g}) must fall on a bin edge")
    date = _choice(spec["date"], DATE_GRANULARITIES, f"{where}.date") if "date" in spec else None
    prefix = _integer(spec["prefix"], f"{where}.prefix", minimum=0) if "prefix" in spec else None
    hierarchy = _hierarchy(spec["hierarchy"], f"{where}.hierarchy") if "hierarchy" in spec else {}
    min_count = None
    if "min_count" in spec:
        if hierarchy:
            raise FedVaultError(f"{where}: give either hierarchy or min_count, not both")
        min_count = _integer(spec["min_count"], f"{where}.min_count", minimum=2)
    return ColumnRule(
        name,
        "quasi",
        type=column_type,
        fixed=fixed,
        width=width,
        bins=bins,
        top=top,
        bottom=bottom,
        date=date,
        prefix=prefix,
        hierarchy=hierarchy,
        min_count=min_count,
    )


def _parse_cleaning(spec: Any, columns: Mapping[str, ColumnRule], source: str) -> Cleaning:
    where = f"{source}: cleaning"
    if not isinstance(spec, Mapping):
        raise FedVaultError(f"{where} must be a table")
    _no_unknown_keys(spec, _CLEANING_KEYS, source, "[cleaning]")
    tokens = _string_list(spec.get("missing_values", []), f"{where}.missing_values")
    missing_values = tuple(token.strip() for token in tokens)
    if "" in missing_values:
        raise FedVaultError(f'{where}.missing_values: empty cells are always missing; omit ""')
    duplicates = None
    if "duplicates" in spec:
        duplicates = _choice(spec["duplicates"], DUPLICATE_RULES, f"{where}.duplicates")
    rules_raw = spec.get("columns", {})
    if not isinstance(rules_raw, Mapping):
        raise FedVaultError(f"{where}.columns must be a table of column = {{...}}")
    rules = {}
    for name, rule_spec in rules_raw.items():
        if name not in columns:
            raise FedVaultError(f"{where}.columns.{name}: column {name!r} has no role in [columns]")
        if not isinstance(rule_spec, Mapping):
            raise FedVaultError(f"{where}.columns.{name} must be a table")
        rules[name] = _parse_cleaning_rule(name, rule_spec, columns[name], source)
    person, per_person, bound = _parse_person(spec, columns, rules, where)
    return Cleaning(
        columns=rules,
        missing_values=missing_values,
        duplicates=duplicates,
        person=person,
        per_person=per_person,
        max_records_per_person=bound,
        declared=True,
    )


def _parse_person(
    spec: Mapping[str, Any],
    columns: Mapping[str, ColumnRule],
    rules: Mapping[str, CleaningRule],
    where: str,
) -> tuple[str | None, str | None, int | None]:
    """The person column, what happens to a person's repeated records, and the bound."""
    if ("person" in spec) != ("per_person" in spec):
        raise FedVaultError(f"{where}: person and per_person go together (give both or neither)")
    if "person" not in spec:
        if "max_records_per_person" in spec:
            raise FedVaultError(f'{where}.max_records_per_person needs per_person = "bound"')
        return None, None, None
    person = spec["person"]
    if not isinstance(person, str) or person not in columns:
        raise FedVaultError(f"{where}.person must name a column with a role, got {person!r}")
    rule = rules.get(person)
    if rule is not None and rule.missing not in (None, "drop"):
        raise FedVaultError(
            f'{where}.columns.{person}: the person column can only have missing = "drop" '
            "(a record without a person cannot be counted against anyone)"
        )
    per_person = _choice(spec["per_person"], PER_PERSON_RULES, f"{where}.per_person")
    if (per_person == "bound") != ("max_records_per_person" in spec):
        raise FedVaultError(f'{where}: per_person = "bound" and max_records_per_person go together')
    bound = 1
    if per_person == "bound":
        bound = _integer(
            spec["max_records_per_person"], f"{where}.max_records_per_person", minimum=1
        )
    return person, per_person, bound


def _parse_cleaning_rule(
    name: str, spec: Mapping[str, Any], column: ColumnRule, source: str
) -> CleaningRule:
    where = f"{source}: cleaning.columns.{name}"
    _no_unknown_keys(spec, _CLEANING_COLUMN_KEYS, source, f"[cleaning.columns.{name}]")
    missing = None
    if "missing" in spec:
        missing = _choice(spec["missing"], MISSING_RULES, f"{where}.missing")
    if column.role == "identifier" and (
        set(spec) - {"missing"} or missing not in (None, "drop", "keep")
    ):
        raise FedVaultError(
            f'{where}: an identifier can only have missing = "drop" or "keep" '
            "(it is dropped or pseudonymized, never imputed or recoded)"
        )
    if missing == "keep" and column.role in ("quasi", "sensitive"):
        raise FedVaultError(
            f'{where}: missing = "keep" leaves cells empty, which a {column.role} column cannot '
            'have; use "drop", an imputation or "category"'
        )
    minimum = _number(spec["min"], f"{where}.min") if "min" in spec else None
    maximum = _number(spec["max"], f"{where}.max") if "max" in spec else None
    if minimum is not None and maximum is not None and minimum > maximum:
        raise FedVaultError(f"{where}: min ({minimum:g}) is above max ({maximum:g})")
    categories: tuple[str, ...] = ()
    if "categories" in spec:
        if minimum is not None or maximum is not None:
            raise FedVaultError(f"{where}: give either min/max or categories, not both")
        categories = tuple(_string_list(spec["categories"], f"{where}.categories"))
        if not categories:
            raise FedVaultError(f"{where}.categories must list at least one value")
    rule = CleaningRule(
        name,
        missing=missing,
        fill=_fill(spec, missing, where),
        minimum=minimum,
        maximum=maximum,
        categories=categories,
        outside=_outside(spec, minimum, maximum, categories, where),
    )
    if rule.numeric and (categories or missing == "category"):
        raise FedVaultError(f"{where}: a numeric rule (min, max, median, mean) cannot add text")
    if rule.numeric and column.type in ("date", "zip", "category"):
        raise FedVaultError(
            f"{where}: the rule treats {name!r} as numbers but [columns] makes it {column.type}"
        )
    if missing == "category" and column.type in ("numeric", "date", "zip"):
        raise FedVaultError(
            f'{where}: missing = "category" would put text into a {column.type} column; '
            "drop or impute instead"
        )
    if "malformed" in spec:
        if not rule.numeric:
            raise FedVaultError(
                f"{where}.malformed needs a numeric rule (min, max, or missing = median/mean)"
            )
        malformed = _choice(spec["malformed"], MALFORMED_RULES, f"{where}.malformed")
        if malformed == "missing" and missing is None:
            raise FedVaultError(f'{where}: malformed = "missing" needs a missing rule as well')
        rule = replace(rule, malformed=malformed)
    return rule


def _fill(spec: Mapping[str, Any], missing: str | None, where: str) -> str | float | None:
    """The constant of missing = "constant", or the label of missing = "category"."""
    if missing not in ("constant", "category"):
        if "fill" in spec:
            raise FedVaultError(f'{where}.fill only applies to missing = "constant" or "category"')
        return None
    if missing == "category":
        fill = spec.get("fill", MISSING_CATEGORY)
        if not isinstance(fill, str) or not fill.strip():
            raise FedVaultError(f"{where}.fill must be a non-empty string (the category)")
        return fill
    if "fill" not in spec:
        raise FedVaultError(f'{where}: missing = "constant" needs fill = VALUE')
    fill = spec["fill"]
    if isinstance(fill, str):
        if not fill.strip():
            raise FedVaultError(f"{where}.fill must not be empty")
        return fill
    return _number(fill, f"{where}.fill")


def _outside(
    spec: Mapping[str, Any],
    minimum: float | None,
    maximum: float | None,
    categories: tuple[str, ...],
    where: str,
) -> str | None:
    """What happens to a value outside the declared domain (required with a domain)."""
    has_range = minimum is not None or maximum is not None
    if not has_range and not categories:
        if "outside" in spec:
            raise FedVaultError(f"{where}.outside needs min, max or categories")
        return None
    if "outside" not in spec:
        raise FedVaultError(
            f"{where}: a declared {'range' if has_range else 'category list'} needs outside = "
            + ('"drop" or "clip"' if has_range else '"drop" or "other"')
        )
    outside = _choice(spec["outside"], OUTSIDE_RULES, f"{where}.outside")
    if outside == "clip" and not has_range:
        raise FedVaultError(f'{where}: outside = "clip" needs min or max')
    if outside == "other" and not categories:
        raise FedVaultError(f'{where}: outside = "other" needs categories')
    return outside


def _integer(value: Any, where: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise FedVaultError(f"{where} must be an integer, got {value!r}")
    if value < minimum:
        raise FedVaultError(f"{where} must be at least {minimum}, got {value}")
    return value


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise FedVaultError(f"{where} must be a finite number, got {value!r}")
    return float(value)


def _choice(value: Any, allowed: tuple[str, ...], where: str) -> str:
    if value not in allowed:
        raise FedVaultError(f"{where} must be one of {', '.join(allowed)}; got {value!r}")
    return value


def _string_list(value: Any, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise FedVaultError(f"{where} must be a list of strings")
    if len(set(value)) != len(value):
        raise FedVaultError(f"{where} lists a value twice")
    return value


def _edges(value: Any, where: str) -> tuple[float, ...]:
    if not isinstance(value, list) or len(value) < 2:
        raise FedVaultError(f"{where} must be a list of at least 2 bin edges")
    edges = tuple(_number(item, where) for item in value)
    if any(b <= a for a, b in itertools.pairwise(edges)):
        raise FedVaultError(f"{where} must be strictly increasing")
    return edges


def _hierarchy(value: Any, where: str) -> dict[str, tuple[str, ...]]:
    """Groups of categories: {group: [members]}; members may be groups themselves."""
    if not isinstance(value, Mapping) or not value:
        raise FedVaultError(f"{where} must be a non-empty table of group = [members]")
    groups = {
        group: tuple(_string_list(members, f"{where}.{group}")) for group, members in value.items()
    }
    parent: dict[str, str] = {}
    for group, members in groups.items():
        if not members:
            raise FedVaultError(f"{where}.{group} has no members")
        for member in members:
            if member in parent:
                raise FedVaultError(
                    f"{where}: {member!r} belongs to both {parent[member]!r} and {group!r}"
                )
            parent[member] = group
    for group in groups:
        seen = {group}
        node = group
        while node in parent:
            node = parent[node]
            if node in seen:
                raise FedVaultError(f"{where}: groups form a cycle through {group!r}")
            seen.add(node)
    return groups
