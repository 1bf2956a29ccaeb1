"""runs.csv: one row per run of a resolved config.yaml, its hyper-parameters as columns (every track).

``run_id`` first, then ``problem``, ``algorithm`` (the curve's label, as in metrics.csv), ``name`` (the
method), ``seed``, ``iterations`` and every field of the algorithm's resolved configuration (``eta``,
``beta``, ``mode``, ...; nested mappings flattened as ``key.sub``, lists as YAML flow text, a user rule's
parameters under their own names). A field whose name is also a metrics column (``samples``, ``loss``,
``lr``) is written ``config/<name>``. Written by the one run-folder writer (:class:`~testbed.results.RunFolder`);
the same config gives the same bytes. Read back with :func:`testbed.results_load.read_runs`.
"""

from __future__ import annotations

import csv
import io

import yaml

KEYS = ("run_id", "problem", "algorithm", "name", "seed", "iterations")


def make_run_id(algorithm: str, index: int, seed: int) -> str:
    """A run's id in an LM / diffusion run folder: ``<algorithm>-<index in algorithms>-s<seed>`` (also its
    ``checkpoints/`` sub-folder); the one place the name is made."""
    return f"{algorithm}-{index}-s{seed}"


def _flat(d: dict, prefix: str = "") -> dict:
    out: dict = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v if not isinstance(v, list) else yaml.safe_dump(v, default_flow_style=True).strip()
    return out


def _hyper(cfg: dict, reserved) -> dict:
    cfg = dict(cfg)
    params = cfg.pop("params", None) if "module" in cfg else None  # a user rule: its parameters by name
    flat = _flat({**cfg, **(params or {})})
    return {(f"config/{k}" if k in reserved or k in KEYS else k): v for k, v in flat.items()}


def runs_from_config(config: dict, reserved=()) -> list[dict]:
    """One dict per run of a resolved config (bandit: its ``runs``; LM: algorithms × seeds)."""
    if "runs" in config:
        rows = []
        for r in config["runs"]:
            policy = (r.get("policy") or {}).get("kind")
            rows.append({"run_id": r["run_id"], "problem": r["problem"], "algorithm": r["label"], "name": r["algorithm"],
                         "seed": r["seed"], "iterations": r["iterations"], "policy": policy, **_hyper(r["config"], reserved)})
        return rows
    if "algorithms" in config and "seeds" in config:  # an LM run folder: run ids as testbed/llm/train.py makes them
        iterations = (config.get("train") or {}).get("iterations")
        rows = []
        for i, a in enumerate(config["algorithms"]):
            for s in config["seeds"]:
                rows.append({"run_id": make_run_id(a["name"], i, s), "problem": config.get("name"),
                             "algorithm": a.get("label", a["name"]), "name": a["name"], "seed": s, "iterations": iterations,
                             **_hyper({k: v for k, v in a.items() if k not in ("name", "label")}, reserved)})
        return rows
    return []


def runs_csv_text(config_text: str, reserved=()) -> str | None:
    """runs.csv for a resolved config.yaml text (None when it names no runs); ``reserved``: the metrics
    columns, which hyper-parameters of the same name are written ``config/<name>`` beside."""
    rows = runs_from_config(yaml.safe_load(config_text) or {}, reserved)
    if not rows:
        return None
    columns = list(KEYS) + sorted({k for r in rows for k in r} - set(KEYS))
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    for r in rows:
        w.writerow(["" if r.get(c) is None else repr(float(r[c])) if isinstance(r[c], float) else str(r[c]) for c in columns])
    return buf.getvalue()
