"""Recoding and generalized cells: bins, top/bottom codes, dates, zip prefixes, categories."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from privacy.anonymization import parse_policy, range_midpoints
from privacy.anonymization.generalize import build_dimension
from privacy.errors import FedVaultError


def dimension(values: list, **options):
    spec = {"role": "quasi", **options}
    policy = parse_policy({"targets": {"k": 1}, "columns": {"col": spec}})
    return build_dimension(policy.columns["col"], pd.Series(values, dtype=object))


def cell(dim, values: list, first, last) -> str:
    """Label of the range from the atom holding `first` to the atom holding `last`."""
    codes = dict(zip(values, dim.codes.tolist(), strict=True))
    return dim.label(codes[first], codes[last])


def test_integer_bins_with_top_and_bottom_codes() -> None:
    values = ["12", "18", "25", "31", "39", "44", "88", "95"]
    dim = dimension(values, width=10, top=90, bottom=20)
    assert dim.kind == "numeric"
    assert cell(dim, values, "31", "39") == "30-39"
    assert cell(dim, values, "31", "44") == "30-49"
    assert cell(dim, values, "95", "95") == "90+"
    assert cell(dim, values, "88", "95") == "80+"
    assert cell(dim, values, "12", "18") == "<20"
    assert cell(dim, values, "12", "31") == "<40"
    assert cell(dim, values, "12", "95") == "*"
    assert dim.ncp(0, dim.atoms - 1) == pytest.approx(1.0)


def test_raw_numbers_and_float_bins() -> None:
    values = ["22.1", "24.0", "27.9", "-3"]
    raw = dimension(values, type="numeric")
    assert cell(raw, values, "22.1", "27.9") == "22.1-27.9"
    assert cell(raw, values, "-3", "22.1") == "[-3, 22.1]"
    assert cell(raw, values, "24.0", "24.0") == "24"
    assert raw.ncp(*(2 * [raw.codes[1]])) == 0.0
    binned = dimension(values, bins=[-5, 20, 25, 30])
    assert cell(binned, values, "22.1", "24.0") == "[20, 25)"
    assert cell(binned, values, "22.1", "27.9") == "[20, 30)"


def test_bins_must_cover_uncoded_values() -> None:
    with pytest.raises(FedVaultError, match=r"value 95 at row 2 is outside the bins \[0, 90\)"):
        dimension(["5", "95"], bins=[0, 30, 90])
    dim = dimension(["5", "95"], bins=[0, 30, 90], top=90)
    assert dim.label(1, 1) == "90+"


def test_dates_by_granularity() -> None:
    values = ["1980-03-02", "1981-02-11", "1984-07-30"]
    year = dimension(values, date="year")
    assert cell(year, values, "1980-03-02", "1984-07-30") == "[1980-1984]"
    assert cell(year, values, "1981-02-11", "1981-02-11") == "1981"
    month = dimension(values, date="month")
    assert cell(month, values, "1980-03-02", "1981-02-11") == "[1980-03..1981-02]"
    day = dimension(values, type="date")
    assert cell(day, values, "1980-03-02", "1981-02-11") == "[1980-03-02..1981-02-11]"
    assert day.ncp(0, 2) == 1.0 and day.ncp(1, 1) == 0.0
    with pytest.raises(FedVaultError, match="row 2 has '03/04/1980'"):
        dimension(["1980-03-02", "03/04/1980"], type="date")


def test_zip_prefixes_keep_leading_zeros() -> None:
    values = ["02134", "02139", "02210", "10001"]
    dim = dimension(values, type="zip")
    assert cell(dim, values, "02134", "02139") == "0213*"
    assert cell(dim, values, "02134", "02210") == "02***"
    assert cell(dim, values, "02134", "10001") == "*****"
    assert dim.ncp(dim.codes[0], dim.codes[1]) == pytest.approx(1 / 3)
    prefixed = dimension(values, prefix=3)
    assert sorted(set(prefixed.label(c, c) for c in prefixed.codes)) == ["021**", "022**", "100**"]
    with pytest.raises(FedVaultError, match="expected digits only"):
        dimension(["02134", "0213A"], type="zip")


def test_category_hierarchy_and_sets() -> None:
    values = ["asthma", "copd", "diabetes", "ckd"]
    hierarchy = {"respiratory": ["asthma", "copd"], "chronic": ["diabetes", "ckd"]}
    dim = dimension(values, hierarchy=hierarchy)
    assert cell(dim, values, "asthma", "copd") == "respiratory"
    assert cell(dim, values, "asthma", "asthma") == "asthma"
    assert cell(dim, values, "copd", "diabetes") == "*"
    assert dim.ncp(dim.codes[0], dim.codes[1]) == pytest.approx(1 / 3)
    plain = dimension(values, type="category")
    assert plain.label(0, 1) == "{asthma,ckd}"
    assert plain.label(0, 3) == "*"
    with pytest.raises(FedVaultError, match="'flu' at row 2 is not in its hierarchy"):
        dimension(["asthma", "flu"], hierarchy=hierarchy)


def test_rare_categories_are_merged() -> None:
    values = ["a"] * 5 + ["b"] * 5 + ["c", "d"]
    dim = dimension(values, min_count=3)
    labels = {dim.label(c, c) for c in dim.codes}
    assert labels == {"a", "b", "other"}
    other = dim.codes[-1]
    assert dim.ncp(other, other) == pytest.approx(1 / 3)


def test_quasi_identifiers_must_be_filled_and_typed() -> None:
    with pytest.raises(FedVaultError, match="empty cell at row 2"):
        dimension(["1", ""], type="numeric")
    with pytest.raises(FedVaultError, match="mixes numbers and text: row 3 has 'abc'"):
        dimension(["1", "2", "abc"], width=5)


def test_range_midpoints() -> None:
    cells = ["34", "30-39", "[20, 25)", "90+", "<18", "*", "[-4, 2]", "2.5-3.5", "[1980-1984]"]
    numbers = range_midpoints(pd.Series(cells)).tolist()
    assert numbers[:5] == [34.0, 34.5, 22.5, 90.0, 18.0]
    assert math.isnan(numbers[5])
    assert numbers[6:] == [-1.0, 3.0, 1982.0]
    assert range_midpoints(pd.Series([1, 2])).tolist() == [1.0, 2.0]
    assert np.isnan(range_midpoints(pd.Series(["F"]))[0])
