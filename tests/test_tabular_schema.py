import numpy as np
import pandas as pd
import pytest

from privacy.errors import FedVaultError
from tasks.tabular import Schema, read_csv

SCHEMA = """
label = "y"
classes = ["no", "yes"]
ignore = ["name"]

[features.age]
type = "numeric"
min = 0
max = 100

[features.color]
type = "categorical"
categories = ["red", "green", "blue"]
"""


def table(**overrides):
    base = {"name": ["a", "b"], "age": ["50", "100"], "color": ["blue", "red"], "y": ["yes", "no"]}
    return pd.DataFrame({**base, **overrides})


def test_encoding_is_identical_across_sites_whatever_their_rows():
    schema = Schema.from_toml(SCHEMA)
    site_a = pd.DataFrame({"name": ["x"], "age": ["50"], "color": ["blue"], "y": ["yes"]})
    site_b = pd.DataFrame(
        {
            "name": ["p", "q", "r"],
            "age": ["10", "50", "90"],
            "color": ["red", "blue", "red"],
            "y": ["no", "yes", "no"],
        }
    )
    xa, ya = schema.encode(site_a)
    xb, yb = schema.encode(site_b)
    np.testing.assert_array_equal(xa[0], xb[1])
    np.testing.assert_allclose(xa[0], [0.5, 0, 0, 1])
    assert ya.tolist() == [1] and yb.tolist() == [0, 1, 0]
    assert schema.num_features == 4


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        (table().drop(columns=["y"]), "label column 'y' is missing"),
        (table().drop(columns=["age"]), "feature column\\(s\\) missing: age"),
        (table(extra=["1", "2"]), "not in the schema: extra"),
        (table(age=["50", "old"]), "numeric but has 'old'"),
        (table(color=["blue", "purple"]), "outside its categories"),
        (table(y=["yes", "maybe"]), "not in classes"),
    ],
)
def test_bad_tables(frame, message):
    with pytest.raises(FedVaultError, match=message):
        Schema.from_toml(SCHEMA).encode(frame)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("label = 3", "'label'"),
        ('label = "y"\nclasses = ["a"]', "at least two"),
        ('label = "y"\nclasses = ["a", "b"]', "no \\[features"),
        (
            'label = "y"\nclasses = ["a","b"]\n[features.f]\ntype = "numeric"\nmin = 1\nmax = 1',
            "max > min",
        ),
        ('label = "y"\nclasses = ["a","b"]\n[features.f]\ntype = "text"', "unknown type"),
        ("label = ", "not valid TOML"),
        ('label = "y"\ncolour = 1', "unknown key"),
    ],
)
def test_bad_schemas(text, message):
    with pytest.raises(FedVaultError, match=message):
        Schema.from_toml(text)


def test_read_csv_bad_files(tmp_path):
    with pytest.raises(FedVaultError, match="not found"):
        read_csv(tmp_path / "missing.csv")
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(FedVaultError, match="empty"):
        read_csv(empty)
    binary = tmp_path / "latin1.csv"
    binary.write_bytes("a,b\n\xe9\xff,1\n".encode("latin-1"))
    with pytest.raises(FedVaultError, match="UTF-8"):
        read_csv(binary)
    header_only = tmp_path / "header.csv"
    header_only.write_text("a,b\n")
    with pytest.raises(FedVaultError, match="no data rows"):
        read_csv(header_only)
