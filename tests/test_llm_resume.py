"""`testbed llm run --checkpoint-every K`, killed with SIGKILL and resumed, gives the metrics of an
uninterrupted run (a tiny model, one process)."""

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("transformers")

import yaml  # noqa: E402
from llm_helpers import toy_spec  # noqa: E402

from testbed.cli import main  # noqa: E402

TIMING = {"wall_time", "peak_memory_mb", "tokens_per_s", "eps"}  # measured, not computed: excluded


def rows(d):
    with open(Path(d) / "metrics.csv", newline="") as f:
        return [{k: v for k, v in r.items() if k not in TIMING} for r in csv.DictReader(f)]


def close(a: str, b: str) -> bool:
    """Equal as text, or as numbers within 1e-6 relative (the stated tolerance)."""
    if a == b:
        return True
    try:
        x, y = float(a), float(b)
    except ValueError:
        return False
    return abs(x - y) <= 1e-6 * max(1.0, abs(x))


@pytest.mark.parametrize("algorithm", [{"name": "rebel"}, {"name": "ppo"}], ids=["rebel", "ppo"])
def test_llm_run_killed_and_resumed_matches_an_uninterrupted_run(tmp_path, algorithm, monkeypatch):
    raw = toy_spec(algorithm, seeds=(0, 1), iterations=6, eval_every=2, save=True)
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(raw))
    assert main(["llm", "run", str(spec), "--out", str(tmp_path / "ref"), "--quiet"]) == 0
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    proc = subprocess.Popen([sys.executable, "-m", "testbed.cli", "llm", "run", str(spec), "--out", "out", "--quiet",
                             "--checkpoint-every", "2"], cwd=tmp_path, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    partial = tmp_path / "out.partial"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:  # kill inside the second run, after a checkpoint
        if partial.is_dir() and any(p.suffix == ".done" for p in partial.iterdir()) and \
                any(p.suffix == ".ckpt" for p in partial.iterdir()):
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "out").exists()
    from testbed.algorithms import ALGORITHMS
    from testbed.training.checkpoint import load_state
    ckpt_t = load_state(next(p for p in partial.iterdir() if p.suffix == ".ckpt"))["t"]
    calls = []
    cls = ALGORITHMS[algorithm["name"]]
    real = cls.lm_update
    monkeypatch.setattr(cls, "lm_update", lambda self, *a: calls.append(1) or real(self, *a))
    assert main(["llm", "run", str(spec), "--out", str(tmp_path / "out"), "--quiet", "--resume",
                 "--checkpoint-every", "2"]) == 0
    assert len(calls) == 6 - ckpt_t  # the finished run was loaded, the other continued from its checkpoint
    a, b = rows(tmp_path / "ref"), rows(tmp_path / "out")
    assert len(a) == len(b) == 2 * 7
    for ra, rb in zip(a, b):
        bad = {k: (ra[k], rb[k]) for k in ra if not close(ra[k], rb[k])}
        assert not bad, bad
    for p in sorted((tmp_path / "ref" / "samples").rglob("*.jsonl")):
        assert (tmp_path / "out" / p.relative_to(tmp_path / "ref")).read_text() == p.read_text()
    assert not partial.exists()
    assert not list(tmp_path.glob(".out.*"))  # the killed run's .out.tmp-PID folder was removed on the resume
