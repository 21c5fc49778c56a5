"""Anonymization speed and information loss: Mondrian against full-domain generalization.

Run from the repository root (pinned to one core):

    python -m benchmarks.anonymization [--rows 100000] [--seed 0]

Table: `rows` synthetic clinic records; quasi-identifiers birth_date (exact day), sex, zip and
age; sensitive attribute diagnosis; targets k=5, l=2 (distinct), up to 5% suppression; every
other clinic column kept as it is (the anonymizer denies a column without a role).
The baseline is full-domain generalization (Samarati/Sweeney): every record gets the same
generalization level per column (birth date: day, month, year, 5/10/20 years, *; age: 1, 5,
10, 20 years, *; zip: 5..0 digits; sex: exact, *), records in groups that still miss the
targets are suppressed, and the lattice node with the lowest normalized certainty penalty
(NCP) among those within the suppression limit is reported. NCP, discernibility and C_avg
use the same definitions for both (docs/anonymization.md).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import argparse
import itertools
import time
from pathlib import Path

import numpy as np
import pandas as pd

from privacy.anonymization import anonymize_table, load_policy, parse_policy
from tasks.clinic import CLINIC_COLUMNS, generate_clinic

K, L, MAX_SUPPRESSION = 5, 2, 0.05
QUASI = ("birth_date", "sex", "zip", "age")
SHIPPED_POLICY = Path(__file__).resolve().parents[1] / "simulations/scenarios/clinic-policy.toml"

ROLES = {
    "name": {"role": "identifier", "action": "drop"},
    "email": {"role": "identifier", "action": "drop"},
    "phone": {"role": "identifier", "action": "drop"},
    "national_id": {"role": "identifier", "action": "pseudonymize"},
    "birth_date": {"role": "quasi", "type": "date"},
    "sex": {"role": "quasi"},
    "zip": {"role": "quasi", "type": "zip"},
    "age": {"role": "quasi", "type": "numeric"},
    "diagnosis": {"role": "sensitive"},
}
POLICY = {
    "targets": {"k": K, "l": L, "max_suppression": MAX_SUPPRESSION},
    "columns": {name: ROLES.get(name, {"role": "keep"}) for name in CLINIC_COLUMNS},
}


def pin_to_one_core() -> str:
    """Restrict this process to one CPU where the platform allows it."""
    if hasattr(os, "sched_setaffinity"):
        cpu = min(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cpu})
        return f"pinned to CPU {cpu}"
    return "not pinned (no sched_setaffinity)"


def run_mondrian(table: pd.DataFrame, policy) -> dict:
    wall, cpu = time.perf_counter(), time.process_time()
    report = anonymize_table(table, policy, bytes(32)).report
    info = report["information_loss"]
    return {
        "wall_s": time.perf_counter() - wall,
        "cpu_s": time.process_time() - cpu,
        "classes": report["equivalence_classes"],
        "suppressed": report["suppressed_records"],
        "ncp": info["normalized_certainty_penalty"],
        "discernibility": info["discernibility"],
        "c_avg": info["average_class_size"],
        "k": report["achieved"]["k"],
        "l": min(report["achieved"]["l_distinct"].values()),
    }


def _levels(table: pd.DataFrame) -> dict[str, list[tuple[np.ndarray, np.ndarray]]]:
    """Per column and level: (group code per record, certainty penalty per record)."""
    days = pd.to_datetime(table["birth_date"]).to_numpy("datetime64[D]").astype(np.int64)
    years = pd.to_datetime(table["birth_date"]).dt.year.to_numpy()
    months = years * 12 + pd.to_datetime(table["birth_date"]).dt.month.to_numpy()
    age = table["age"].astype(int).to_numpy()
    zips = table["zip"].to_numpy(dtype=str)

    def numeric(values: np.ndarray, groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        codes = np.unique(groups, return_inverse=True)[1].reshape(-1)
        bounds = pd.Series(values).groupby(codes).agg(["min", "max"])
        spread = (bounds["max"] - bounds["min"]).to_numpy()
        return codes, spread[codes] / max(values.max() - values.min(), 1)

    def prefix(digits: int) -> tuple[np.ndarray, np.ndarray]:
        heads = np.array([z[:digits] for z in zips])
        codes = np.unique(heads, return_inverse=True)[1].reshape(-1)
        distinct = pd.Series(zips).groupby(codes).nunique().to_numpy()
        return codes, (distinct[codes] - 1) / max(len(set(zips)) - 1, 1)

    sex_codes = np.unique(table["sex"].to_numpy(dtype=str), return_inverse=True)[1].reshape(-1)
    everything = np.zeros(len(table), dtype=np.int64)
    return {
        "birth_date": [numeric(days, days), numeric(days, months), numeric(days, years)]
        + [numeric(days, years // span) for span in (5, 10, 20)]
        + [numeric(days, everything)],
        "age": [numeric(age, age // span) for span in (1, 5, 10, 20)] + [numeric(age, everything)],
        "zip": [prefix(digits) for digits in range(5, -1, -1)],
        "sex": [(sex_codes, np.zeros(len(table))), (everything, np.ones(len(table)))],
    }


def run_full_domain(table: pd.DataFrame) -> dict:
    """Best full-domain generalization meeting k and l within the suppression limit."""
    wall, cpu = time.perf_counter(), time.process_time()
    levels = _levels(table)
    diagnosis = np.unique(table["diagnosis"].to_numpy(dtype=str), return_inverse=True)[1]
    diagnosis = diagnosis.reshape(-1)
    values = int(diagnosis.max()) + 1
    rows, best = len(table), None
    for node in itertools.product(*(range(len(levels[column])) for column in QUASI)):
        key = np.zeros(rows, dtype=np.int64)
        for column, level in zip(QUASI, node, strict=True):
            codes = levels[column][level][0]
            key = key * (int(codes.max()) + 1) + codes
        classes, inverse, sizes = np.unique(key, return_inverse=True, return_counts=True)
        inverse = inverse.reshape(-1)
        pairs = np.unique(inverse * values + diagnosis)
        distinct = np.bincount(pairs // values, minlength=len(classes))
        bad = (sizes < K) | (distinct < L)
        suppressed = int(sizes[bad].sum())
        if suppressed > MAX_SUPPRESSION * rows:
            continue
        kept = ~bad[inverse]
        penalties = [
            (levels[c][lvl][1] * kept).sum() + suppressed
            for c, lvl in zip(QUASI, node, strict=True)
        ]
        ncp = float(np.mean(penalties)) / rows
        if best is None or ncp < best["ncp"]:
            good = sizes[~bad]
            best = {
                "ncp": ncp,
                "node": dict(zip(QUASI, node, strict=True)),
                "classes": len(good),
                "suppressed": suppressed,
                "discernibility": int((good.astype(np.int64) ** 2).sum()) + suppressed * rows,
                "c_avg": (rows - suppressed) / len(good) / K,
                "k": int(good.min()),
                "l": int(distinct[~bad].min()),
            }
    assert best is not None, "the fully generalized node always qualifies"
    best["wall_s"] = time.perf_counter() - wall
    best["cpu_s"] = time.process_time() - cpu
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    pinned = pin_to_one_core()
    start = time.perf_counter()
    table = generate_clinic(args.rows, args.seed).astype(str)
    generated = time.perf_counter() - start
    print(f"{args.rows} clinic rows (seed {args.seed}) generated in {generated:.2f} s; {pinned}")
    print(
        f"quasi-identifiers: {', '.join(QUASI)}; targets k={K}, l={L} (distinct), "
        f"max_suppression={MAX_SUPPRESSION:.0%}\n"
    )
    results = {
        "Mondrian (this library)": run_mondrian(table, parse_policy(POLICY)),
        "Mondrian, shipped clinic-policy.toml": run_mondrian(table, load_policy(SHIPPED_POLICY)),
        "full-domain generalization (best node)": run_full_domain(table),
    }
    header = f"{'method':40} {'wall s':>7} {'cpu s':>7} {'classes':>8} {'suppr.':>7} "
    header += f"{'NCP':>7} {'discernibility':>15} {'C_avg':>7} {'k':>3} {'l':>3}"
    print(header)
    print("-" * len(header))
    for name, r in results.items():
        print(
            f"{name:40} {r['wall_s']:7.2f} {r['cpu_s']:7.2f} {r['classes']:8d} "
            f"{r['suppressed']:7d} {r['ncp']:7.4f} {r['discernibility']:15d} {r['c_avg']:7.2f} "
            f"{r['k']:3d} {r['l']:3d}"
        )
    node = results["full-domain generalization (best node)"]["node"]
    print(f"\nfull-domain best node (generalization level per column): {node}")


if __name__ == "__main__":
    main()
