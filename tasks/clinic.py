"""Synthetic `clinic` table: realistic patient records with identifiers, generated offline.

Anonymization needs a table that looks like what a hospital holds (names, emails, birth dates,
zip codes next to clinical measurements) without any real person in it, and the tabular task
needs a label a small model can learn. Faker supplies realistic name pools; everything else is
drawn with one seeded numpy Generator in vectorised form, so 100,000 rows take about a second
and the same seed always gives the same table.
"""

from __future__ import annotations

import os
import re

import numpy as np
import pandas as pd
from faker import Faker

from privacy.atomic import atomic_path
from privacy.errors import FedVaultError

REFERENCE_DATE = pd.Timestamp("2024-01-01")
"""Ages are whole years completed at this date, so `age` always agrees with `birth_date`."""

DIRECT_IDENTIFIERS = ("name", "email", "phone", "national_id")
QUASI_IDENTIFIERS = ("birth_date", "sex", "zip")
CLINICAL_FEATURES = (
    "age",
    "bmi",
    "systolic_bp",
    "cholesterol",
    "glucose",
    "smoker",
    "exercise_hours",
)
LABEL = "readmitted"
CLINIC_COLUMNS = (
    *DIRECT_IDENTIFIERS,
    *QUASI_IDENTIFIERS,
    "hospital",
    "diagnosis",
    *CLINICAL_FEATURES,
    LABEL,
)

HOSPITALS = ("St. Mary", "General", "Riverside", "Northwell", "Lakeside")
HOSPITAL_SHARES = (0.32, 0.26, 0.18, 0.15, 0.09)
# Each hospital serves two 3-digit zip areas; some start with 0 so leading zeros matter.
HOSPITAL_ZIP_AREAS = (
    ("021", "024"),
    ("100", "112"),
    ("606", "605"),
    ("019", "018"),
    ("553", "554"),
)
ZIPS_PER_AREA = 12
LOCAL_PATIENT_SHARE = 0.85

# diagnosis: (base logit, change per 15 years of age above 55, effect on readmission logit)
DIAGNOSES = {
    "none": (1.2, -0.5, -1.0),
    "hypertension": (0.6, 0.5, 0.2),
    "diabetes": (0.3, 0.3, 0.5),
    "asthma": (0.0, -0.4, -0.2),
    "copd": (-0.6, 0.6, 0.9),
    "heart_failure": (-0.9, 0.9, 1.5),
    "ckd": (-0.8, 0.7, 1.1),
    "depression": (0.1, -0.3, 0.3),
}

_NAME_POOL = 800
_FORMATS_PHONE = ("({a}) {e}-{l}", "{a}-{e}-{l}", "{a}.{e}.{l}", "+1-{a}-{e}-{l}")


def clinic_zip_codes() -> dict[str, tuple[str, ...]]:
    """The fixed zip codes each hospital serves (the same for every seed)."""
    rng = np.random.default_rng(20240101)
    zips: dict[str, tuple[str, ...]] = {}
    for hospital, areas in zip(HOSPITALS, HOSPITAL_ZIP_AREAS, strict=True):
        codes = []
        for area in areas:
            tails = rng.choice(100, size=ZIPS_PER_AREA, replace=False)
            codes.extend(f"{area}{tail:02d}" for tail in sorted(tails))
        zips[hospital] = tuple(codes)
    return zips


def generate_clinic(rows: int, seed: int) -> pd.DataFrame:
    """A `clinic` table of `rows` synthetic patients; the same seed gives the same table."""
    if isinstance(rows, bool) or not isinstance(rows, int) or rows < 1:
        raise FedVaultError(f"clinic rows must be a positive integer, got {rows!r}")
    rng = np.random.default_rng(seed)
    fake = Faker("en_US")
    fake.seed_instance(seed)

    sex = np.where(rng.random(rows) < 0.52, "F", "M")
    names, emails = _names_and_emails(fake, rng, sex)
    birth_date, age = _birth_dates(rng, rows)
    hospital_idx = rng.choice(len(HOSPITALS), size=rows, p=HOSPITAL_SHARES)
    diagnosis_idx = _diagnoses(rng, age)
    diag_names = np.array(list(DIAGNOSES))

    clinical = _clinical_features(rng, age, sex, diag_names[diagnosis_idx])
    diag_effect = np.array([effect for _, _, effect in DIAGNOSES.values()])
    readmitted = _readmission(rng, age, clinical, diag_effect[diagnosis_idx])

    table = pd.DataFrame(
        {
            "name": names,
            "email": emails,
            "phone": _phones(rng, rows),
            "national_id": _national_ids(rng, rows),
            "birth_date": birth_date,
            "sex": sex,
            "zip": _zips(rng, hospital_idx),
            "hospital": np.array(HOSPITALS)[hospital_idx],
            "diagnosis": diag_names[diagnosis_idx],
            "age": age,
            **clinical,
            "readmitted": readmitted,
        }
    )
    return table[list(CLINIC_COLUMNS)]


def write_clinic_csv(rows: int, seed: int, path: str | os.PathLike[str]) -> pd.DataFrame:
    """Generate a `clinic` table and write it to `path` as CSV, atomically; return the table."""
    table = generate_clinic(rows, seed)
    try:
        with atomic_path(path) as tmp:
            table.to_csv(tmp, index=False)
    except OSError as exc:
        raise FedVaultError(f"cannot write {path}: {exc.strerror or exc}") from exc
    return table


def _unique(rng: np.random.Generator, draw, rows: int) -> np.ndarray:
    """Draw `rows` values with `draw(rng, n)` and redraw duplicates until all are distinct."""
    values = draw(rng, rows)
    for _ in range(20):
        duplicated = pd.Series(values).duplicated().to_numpy()
        if not duplicated.any():
            break
        values[duplicated] = draw(rng, int(duplicated.sum()))
    return values


def _name_pool(make) -> np.ndarray:
    return np.array(sorted({make() for _ in range(_NAME_POOL)}))


def _names_and_emails(
    fake: Faker, rng: np.random.Generator, sex: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    female = _name_pool(fake.first_name_female)
    male = _name_pool(fake.first_name_male)
    last = _name_pool(fake.last_name)
    domains = np.array(sorted({fake.free_email_domain() for _ in range(60)}))
    rows = len(sex)
    first = np.where(
        sex == "F",
        female[rng.integers(len(female), size=rows)],
        male[rng.integers(len(male), size=rows)],
    )
    surname = last[rng.integers(len(last), size=rows)]
    names = pd.Series(first) + " " + pd.Series(surname)

    def local_part(f: pd.Series, s: pd.Series) -> pd.Series:
        f = f.str.lower().map(lambda v: re.sub(r"[^a-z]", "", v))
        s = s.str.lower().map(lambda v: re.sub(r"[^a-z]", "", v))
        style = rng.integers(3, size=len(f))
        return pd.Series(
            np.select([style == 0, style == 1], [f + "." + s, f.str[0] + s], f + s),
            dtype=object,
        )

    base = local_part(pd.Series(first), pd.Series(surname))
    domain = pd.Series(domains[rng.integers(len(domains), size=rows)])

    def draw(generator: np.random.Generator, n: int) -> np.ndarray:
        return generator.integers(1, 10_000, size=n)

    suffix = pd.Series(_unique(rng, draw, rows)).astype(str)
    with_number = rng.random(rows) < 0.7
    local = base.where(~with_number, base + suffix)
    emails = (local + "@" + domain).to_numpy(dtype=object)
    duplicated = pd.Series(emails).duplicated().to_numpy()
    emails[duplicated] = (base + suffix + "@" + domain).to_numpy(dtype=object)[duplicated]
    return names.to_numpy(dtype=object), emails


def _phones(rng: np.random.Generator, rows: int) -> np.ndarray:
    def draw(generator: np.random.Generator, n: int) -> np.ndarray:
        area = generator.integers(201, 990, size=n)
        area = np.where(area % 100 == 11, area + 1, area)
        exchange = generator.integers(200, 1000, size=n)
        line = generator.integers(0, 10_000, size=n)
        return area * 10**7 + exchange * 10**4 + line

    numbers = _unique(rng, draw, rows)
    area = pd.Series(numbers // 10**7).astype(str)
    exchange = pd.Series(numbers // 10**4 % 1000).astype(str)
    line = pd.Series(numbers % 10**4).astype(str).str.zfill(4)
    style = rng.integers(len(_FORMATS_PHONE), size=rows)
    formatted = [
        area.radd("(") + ") " + exchange + "-" + line,
        area + "-" + exchange + "-" + line,
        area + "." + exchange + "." + line,
        "+1-" + area + "-" + exchange + "-" + line,
    ]
    return np.select([style == i for i in range(len(formatted))], formatted).astype(object)


def _national_ids(rng: np.random.Generator, rows: int) -> np.ndarray:
    def draw(generator: np.random.Generator, n: int) -> np.ndarray:
        area = generator.integers(1, 900, size=n)
        area = np.where(area == 666, 667, area)
        group = generator.integers(1, 100, size=n)
        serial = generator.integers(1, 10_000, size=n)
        return area * 10**6 + group * 10**4 + serial

    numbers = pd.Series(_unique(rng, draw, rows))
    area = (numbers // 10**6).astype(str).str.zfill(3)
    group = (numbers // 10**4 % 100).astype(str).str.zfill(2)
    serial = (numbers % 10**4).astype(str).str.zfill(4)
    return (area + "-" + group + "-" + serial).to_numpy(dtype=object)


def _birth_dates(rng: np.random.Generator, rows: int) -> tuple[np.ndarray, np.ndarray]:
    years_old = 18 + 73 * rng.beta(1.8, 1.6, size=rows)
    days_old = np.floor(years_old * 365.25).astype("int64")
    birth = pd.to_datetime(REFERENCE_DATE.to_datetime64() - days_old.astype("timedelta64[D]"))
    before_birthday = (birth.month > REFERENCE_DATE.month) | (
        (birth.month == REFERENCE_DATE.month) & (birth.day > REFERENCE_DATE.day)
    )
    age = (REFERENCE_DATE.year - birth.year - before_birthday.astype(int)).to_numpy()
    # Drawing whole days can land one day past 90 years; keep ages within 18-90.
    too_old = age > 90
    birth = birth.where(~too_old, birth + pd.Timedelta(days=366))
    age = np.where(too_old, 90, age)
    return birth.strftime("%Y-%m-%d").to_numpy(dtype=object), age.astype("int64")


def _diagnoses(rng: np.random.Generator, age: np.ndarray) -> np.ndarray:
    base = np.array([b for b, _, _ in DIAGNOSES.values()])
    slope = np.array([s for _, s, _ in DIAGNOSES.values()])
    logits = base[None, :] + slope[None, :] * ((age[:, None] - 55) / 15)
    return np.argmax(logits + rng.gumbel(size=logits.shape), axis=1)


def _clinical_features(
    rng: np.random.Generator, age: np.ndarray, sex: np.ndarray, diagnosis: np.ndarray
) -> dict[str, np.ndarray]:
    rows = len(age)
    older = (age - 55) / 15
    bmi = np.clip(rng.normal(27.5 + 0.6 * older + 2.5 * (diagnosis == "diabetes"), 4.8), 15, 55)
    smoker = rng.random(rows) < np.where(diagnosis == "copd", 0.6, 0.18)
    exercise = np.clip(rng.gamma(2.0, 1.6, size=rows) * np.exp(-0.15 * older), 0, 20)
    systolic = (
        118
        + 6 * older
        + 0.7 * (bmi - 27)
        + 4 * (sex == "M")
        + 18 * (diagnosis == "hypertension")
        + rng.normal(0, 11, size=rows)
    )
    cholesterol = 195 + 8 * older + 1.2 * (bmi - 27) + rng.normal(0, 32, size=rows)
    glucose = (
        96
        + 0.9 * (bmi - 27)
        + 4 * older
        + 55 * (diagnosis == "diabetes")
        + rng.normal(0, 14, size=rows)
    )
    return {
        "bmi": np.round(bmi, 1),
        "systolic_bp": np.clip(np.rint(systolic), 85, 220).astype("int64"),
        "cholesterol": np.clip(np.rint(cholesterol), 100, 360).astype("int64"),
        "glucose": np.clip(np.rint(glucose), 55, 400).astype("int64"),
        "smoker": np.where(smoker, "yes", "no").astype(object),
        "exercise_hours": np.round(exercise, 1),
    }


def _readmission(
    rng: np.random.Generator,
    age: np.ndarray,
    clinical: dict[str, np.ndarray],
    diagnosis_effect: np.ndarray,
) -> np.ndarray:
    logit = (
        -0.55
        + 0.045 * (age - 55)
        + 0.07 * (clinical["bmi"] - 27.5)
        + 0.03 * (clinical["systolic_bp"] - 125)
        + 0.008 * (clinical["cholesterol"] - 200)
        + 0.02 * (clinical["glucose"] - 105)
        + 0.9 * (clinical["smoker"] == "yes")
        - 0.3 * (clinical["exercise_hours"] - 3)
        + 1.3 * diagnosis_effect
    )
    probability = 1 / (1 + np.exp(-logit))
    return (rng.random(len(age)) < probability).astype("int64")


def _zips(rng: np.random.Generator, hospital_idx: np.ndarray) -> np.ndarray:
    zips = clinic_zip_codes()
    per_hospital = np.array([zips[h] for h in HOSPITALS])
    all_zips = per_hospital.reshape(-1)
    weights = 1 / np.arange(1, per_hospital.shape[1] + 1) ** 0.6
    weights /= weights.sum()
    rows = len(hospital_idx)
    local = per_hospital[hospital_idx, rng.choice(per_hospital.shape[1], size=rows, p=weights)]
    elsewhere = all_zips[rng.integers(len(all_zips), size=rows)]
    return np.where(rng.random(rows) < LOCAL_PATIENT_SHARE, local, elsewhere).astype(object)
