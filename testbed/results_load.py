"""Run folders as tables: :func:`load` (metrics.csv joined on run_id with runs.csv — the runs'
hyper-parameters, :mod:`testbed.run_table` — as a pandas DataFrame) for every track.

pandas is optional (``pip install 'rebel-testbed[tools]'``); :func:`load_rows` gives the same join as a
list of dicts without it. Folders written before runs.csv existed are read from their config.yaml.
"""
from __future__ import annotations

import csv
import io
from pathlib import Path

import yaml

from testbed.errors import InputError
from testbed.results import LM_COLUMNS, read_metrics
from testbed.run_table import runs_csv_text


def _parse(v: str):
    if v == "":
        return None
    try:
        return yaml.safe_load(v) if v[0] in "[{" else int(v) if v.lstrip("-").isdigit() else float(v)
    except (ValueError, yaml.YAMLError):
        return {"True": True, "False": False}.get(v, v)


def read_runs(run_dir: str | Path) -> list[dict]:
    """A run folder's runs.csv (numbers and flags parsed), or the same table from config.yaml in a folder
    written before runs.csv existed."""
    run_dir = Path(run_dir)
    path, config = run_dir / "runs.csv", run_dir / "config.yaml"
    if path.is_file():
        text = path.read_text()
    elif config.is_file():
        text = runs_csv_text(config.read_text(), LM_COLUMNS) or ""
    else:
        raise InputError(f"{str(run_dir)!r} is not a run folder (no config.yaml)")
    text_keys = ("run_id", "problem", "algorithm", "name")
    return [{k: (v if k in text_keys else _parse(v)) for k, v in r.items()} for r in csv.DictReader(io.StringIO(text))]


def load_rows(path: str | Path) -> list[dict]:
    """metrics.csv (measured columns merged back) joined with runs.csv on run_id: one dict per row."""
    runs = {r["run_id"]: r for r in read_runs(path)}
    out = []
    for row in read_metrics(path):
        extra = {k: v for k, v in runs.get(row["run_id"], {}).items() if k not in row}
        out.append({**row, **extra})
    return out


def load(path: str | Path):
    """A run folder (any track) as a pandas DataFrame: one row per evaluated iteration per run, the metrics
    columns, then the run's hyper-parameters (``name``, ``iterations``, ``eta``, ...). Columns no run has
    (all empty) are dropped."""
    try:
        import pandas as pd
    except ImportError:
        raise InputError("testbed.load needs pandas (pip install 'rebel-testbed[tools]'); "
                         "testbed.results_load.load_rows gives the same rows as dicts") from None
    df = pd.DataFrame(load_rows(path))
    return df.dropna(axis=1, how="all")
