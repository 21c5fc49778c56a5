"""CSV tables encoded by a declared schema shared by every site.

A site never fits the encoding on its own rows: numeric ranges and category lists come from
the schema, so every site maps the same value to the same feature vector, and a model trained
on one site's encoding means the same thing at every other site.

Schema (TOML):

    label = "readmitted"
    classes = ["0", "1"]
    ignore = ["name", "email"]          # present in the CSV, not used as features

    [features.age]
    type = "numeric"
    min = 18
    max = 90

    [features.smoker]
    type = "categorical"
    categories = ["no", "yes"]
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from privacy.errors import FedVaultError


@dataclass(frozen=True)
class Feature:
    """One declared input column: numeric with a range, or categorical with its categories."""

    name: str
    kind: str
    low: float = 0.0
    high: float = 1.0
    categories: tuple[str, ...] = ()

    @property
    def width(self) -> int:
        return len(self.categories) if self.kind == "categorical" else 1


@dataclass(frozen=True)
class Schema:
    """The shared description of a table: label, its classes, features and ignored columns."""

    label: str
    classes: tuple[str, ...]
    features: tuple[Feature, ...]
    ignore: tuple[str, ...] = ()

    @property
    def num_features(self) -> int:
        return sum(f.width for f in self.features)

    @classmethod
    def from_toml(cls, text: str, origin: str = "schema") -> Schema:
        try:
            raw = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise FedVaultError(f"{origin}: not valid TOML ({exc})") from None
        unknown = set(raw) - {"label", "classes", "features", "ignore"}
        if unknown:
            raise FedVaultError(f"{origin}: unknown key(s) {', '.join(sorted(unknown))}")
        if not isinstance(raw.get("label"), str):
            raise FedVaultError(f"{origin}: 'label' (the label column name) is required")
        classes = tuple(str(c) for c in raw.get("classes", ()))
        if len(classes) < 2:
            raise FedVaultError(f"{origin}: 'classes' must list at least two label values")
        features = tuple(
            _parse_feature(name, spec, origin) for name, spec in raw.get("features", {}).items()
        )
        if not features:
            raise FedVaultError(f"{origin}: no [features.NAME] declared")
        return cls(raw["label"], classes, features, tuple(raw.get("ignore", ())))

    @classmethod
    def load(cls, path: str | Path) -> Schema:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise FedVaultError(f"cannot read schema {path}: {exc.strerror}") from None
        return cls.from_toml(text, origin=str(path))

    def check_columns(self, columns: list[str], origin: str) -> None:
        """Refuse a table that lacks a declared column or has an undeclared one."""
        declared = {self.label, *(f.name for f in self.features), *self.ignore}
        if self.label not in columns:
            raise FedVaultError(f"{origin}: label column {self.label!r} is missing")
        missing = [f.name for f in self.features if f.name not in columns]
        if missing:
            raise FedVaultError(f"{origin}: feature column(s) missing: {', '.join(missing)}")
        extra = [c for c in columns if c not in declared]
        if extra:
            raise FedVaultError(
                f"{origin}: column(s) not in the schema: {', '.join(extra)} "
                "(declare them as features or list them under 'ignore')"
            )

    def encode(self, table: pd.DataFrame, origin: str = "table") -> tuple[np.ndarray, np.ndarray]:
        """Feature matrix (float32, numeric scaled to [0, 1], one-hot categories) and labels."""
        self.check_columns(list(table.columns), origin)
        blocks = [_encode_feature(f, table[f.name], origin) for f in self.features]
        labels = table[self.label].astype(str).str.strip()
        unknown = sorted(set(labels) - set(self.classes))
        if unknown:
            raise FedVaultError(
                f"{origin}: label value(s) {', '.join(unknown[:5])} "
                f"not in classes {list(self.classes)}"
            )
        y = labels.map({c: i for i, c in enumerate(self.classes)}).to_numpy(np.int64)
        return np.concatenate(blocks, axis=1).astype(np.float32), y


def read_csv(path: str | Path) -> pd.DataFrame:
    """Read a CSV as strings, turning every way it can be unreadable into one clear line."""
    path = Path(path)
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8")
    except FileNotFoundError:
        raise FedVaultError(f"CSV file not found: {path}") from None
    except UnicodeDecodeError:
        raise FedVaultError(f"{path}: not valid UTF-8 text") from None
    except pd.errors.EmptyDataError:
        raise FedVaultError(f"{path}: the file is empty") from None
    except (pd.errors.ParserError, OSError) as exc:
        raise FedVaultError(f"{path}: not a readable CSV ({str(exc).splitlines()[0]})") from None
    if table.empty:
        raise FedVaultError(f"{path}: no data rows")
    return table


def _parse_feature(name: str, spec: dict, origin: str) -> Feature:
    kind = spec.get("type")
    if kind == "numeric":
        try:
            low, high = float(spec["min"]), float(spec["max"])
        except (KeyError, TypeError, ValueError):
            raise FedVaultError(f"{origin}: numeric feature {name!r} needs min and max") from None
        if not high > low:
            raise FedVaultError(f"{origin}: feature {name!r} needs max > min")
        return Feature(name, "numeric", low=low, high=high)
    if kind == "categorical":
        categories = tuple(str(c) for c in spec.get("categories", ()))
        if not categories:
            raise FedVaultError(f"{origin}: categorical feature {name!r} needs categories")
        return Feature(name, "categorical", categories=categories)
    raise FedVaultError(f"{origin}: feature {name!r} has unknown type {kind!r}")


def _encode_feature(feature: Feature, column: pd.Series, origin: str) -> np.ndarray:
    if feature.kind == "numeric":
        values = pd.to_numeric(column, errors="coerce")
        bad = column[values.isna()]
        if len(bad):
            raise FedVaultError(
                f"{origin}: column {feature.name!r} is numeric but has {bad.iloc[0]!r}"
            )
        scaled = (values.to_numpy(np.float64) - feature.low) / (feature.high - feature.low)
        return np.clip(scaled, 0.0, 1.0)[:, None]
    values = column.astype(str).str.strip()
    unknown = sorted(set(values) - set(feature.categories))
    if unknown:
        raise FedVaultError(
            f"{origin}: column {feature.name!r} has value(s) {', '.join(map(repr, unknown[:5]))} "
            f"outside its categories {list(feature.categories)}"
        )
    index = values.map({c: i for i, c in enumerate(feature.categories)}).to_numpy()
    return np.eye(len(feature.categories))[index]
