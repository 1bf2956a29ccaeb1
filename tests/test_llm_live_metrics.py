"""metrics.csv is written every iteration, atomically (issue 18): ``kill -9`` in the middle of an LM run leaves a
valid metrics.csv holding the completed iterations' rows, byte-equal to the first rows of the uninterrupted run."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("transformers")
from llm_helpers import toy_spec  # noqa: E402

from testbed.experiments.spec import dump_yaml  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def spec(iterations: int) -> dict:
    # constant LR and an evaluation every iteration: the first k rows do not depend on the run's length
    raw = toy_spec({"name": "rebel"}, iterations=iterations, batch=8, minibatch=8, max_new_tokens=4, eval_every=1,
                   lr_schedule="constant")
    raw["eval_prompts"] = {"kind": "toy", "count": 8, "seed": 1}
    return raw


def test_kill_9_mid_run_leaves_the_completed_rows(tmp_path):
    (tmp_path / "long.yaml").write_text(dump_yaml(spec(10_000)))
    out = tmp_path / "run"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "testbed.cli", "llm", "run", str(tmp_path / "long.yaml"), "--out",
                             str(out)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    live = tmp_path / f".run.tmp-{proc.pid}" / "metrics.csv"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if live.is_file() and live.read_text().count("\n") >= 4:  # header + iterations 0, 1, 2
                break
            time.sleep(0.05)
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        proc.kill()  # SIGKILL: no handler, no cleanup
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stderr.close()
    assert not out.exists()
    text = live.read_text()
    lines = text.splitlines()
    k = len(lines) - 1
    assert k >= 3 and text.endswith("\n")
    assert [int(x.split(",")[lines[0].split(",").index("iteration")]) for x in lines[1:]] == list(range(k))

    from testbed.llm.spec import parse_lm_spec
    from testbed.llm.train import run_lm_spec
    ref = run_lm_spec(parse_lm_spec(spec(k - 1)), tmp_path / "ref", progress=False)
    assert (ref / "metrics.csv").read_text() == text
