"""Determinism and resume: same spec and seed give the same bytes; a run killed with SIGKILL at a random
point and resumed writes exactly the files of an uninterrupted run (all but timings.json)."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from testbed.algorithms import REBEL, Step
from testbed.cli import main

SPEC = """
name: resume
problems:
  - {kind: tabular, family: random, contexts: 5, actions: 4, seed: 2, noise_std: 0.1}
algorithms:
  - {name: rebel, mode: sampled, solver: adam, pairs: 64, eta: 1.0, label: rebel-adam}
  - {name: rebel, mode: sampled, pairs: 64, eta: [0.5, 2.0]}
  - {name: npg, mode: sampled, samples: 128}
  - {name: ppo, batch: 128, minibatch: 32, critic: mlp}
  - {name: dpo, mode: online, pairs: 64, label: dpo-online}
  - {name: dpo, mode: offline, pairs: 300, label: dpo-offline}
seeds: 2
iterations: 40
eval_every: 3
"""
PREF = """
  - {kind: preference, family: rps, pi_ref: [0.6, 0.3, 0.1]}
"""
FILES = ("config.yaml", "metrics.csv", "policies.npz", "meta.json")


def write(tmp_path: Path) -> Path:
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC)
    return spec


def cli(*args, cwd):
    # its own session, so SIGKILL can take the whole process group (with --jobs, the workers too)
    return subprocess.Popen([sys.executable, "-m", "testbed.cli", *args], cwd=cwd, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ref")
    spec = write(tmp)
    assert main(["run", str(spec), "--out", str(tmp / "a"), "--quiet"]) == 0
    return tmp, {n: (tmp / "a" / n).read_bytes() for n in FILES}


def test_same_spec_and_seed_give_the_same_bytes(reference, tmp_path):
    tmp, ref = reference
    assert main(["run", str(tmp / "spec.yaml"), "--out", str(tmp_path / "b"), "--quiet", "--jobs", "2",
                 "--checkpoint-every", "5"]) == 0
    for n in FILES:
        assert (tmp_path / "b" / n).read_bytes() == ref[n], n
    assert not (tmp_path / "b.partial").exists()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sigkill_at_a_random_point_then_resume_gives_identical_outputs(reference, tmp_path, seed):
    """Kill once the run's checkpoint folder holds a random number of files (finished runs and
    mid-run checkpoints, written every 7 iterations), then --resume."""
    tmp, ref = reference
    rng = np.random.default_rng(seed)
    target = int(rng.integers(1, 10))  # 11 groups (seeds of a least-squares REBEL/NPG run as one stack)
    jobs = "2" if seed == 2 else "1"
    proc = cli("run", str(tmp / "spec.yaml"), "--out", "out", "--quiet", "--checkpoint-every", "7", "--jobs", jobs,
               cwd=tmp_path)
    partial = tmp_path / "out.partial"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if partial.is_dir() and len([p for p in partial.iterdir() if p.suffix in (".done", ".ckpt")]) >= target:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "out").exists() and partial.is_dir()
    saved = sorted(p.name for p in partial.iterdir())
    assert any(n.endswith((".done", ".ckpt")) for n in saved)
    resumed = cli("run", str(tmp / "spec.yaml"), "--out", "out", "--quiet", "--resume", "--jobs", jobs, cwd=tmp_path)
    assert resumed.wait(timeout=600) == 0, resumed.stderr.read()
    for n in FILES:
        assert (tmp_path / "out" / n).read_bytes() == ref[n], (n, saved)
    assert not partial.exists()


def test_resume_loads_finished_runs_instead_of_recomputing_them(reference, tmp_path):
    """Tamper with a finished run stored in the partial folder: the resumed output carries the tampered
    value, so the run was loaded, not recomputed."""
    from testbed.training.checkpoint import save_state

    tmp, _ = reference
    spec = tmp / "spec.yaml"
    assert main(["run", str(spec), "--out", str(tmp_path / "full"), "--quiet"]) == 0
    partial = tmp_path / "out.partial"
    partial.mkdir()
    (partial / "config.yaml").write_bytes((tmp_path / "full" / "config.yaml").read_bytes())
    from testbed.experiments import load_spec
    from testbed.experiments.runner import _worker, batch_groups, group_key
    s = load_spec(spec)
    group = batch_groups(s)[0]  # the stack of seeds that holds run 0
    plans = [s.runs[i] for i in group]
    done = _worker(plans, [s.problems[p.problem] for p in plans])
    rows = done[0][0]
    rows[-1]["reward"] = 12345.0
    save_state(partial / f"{group_key(s, group, {})}.done", done)
    assert main(["run", str(spec), "--out", str(tmp_path / "out"), "--quiet", "--resume"]) == 0
    from testbed.experiments import read_metrics
    assert read_metrics(tmp_path / "out")[len(rows) - 1]["reward"] == 12345.0


def test_partial_run_needs_resume_or_overwrite(reference, tmp_path, capsys):
    tmp, _ = reference
    (tmp_path / "out.partial").mkdir()
    (tmp_path / "out.partial" / "config.yaml").write_text("something else\n")
    assert main(["run", str(tmp / "spec.yaml"), "--out", str(tmp_path / "out"), "--quiet"]) == 2
    assert "--resume" in capsys.readouterr().err
    assert main(["run", str(tmp / "spec.yaml"), "--out", str(tmp_path / "out"), "--quiet", "--resume"]) == 2
    assert "the spec changed" in capsys.readouterr().err
    assert main(["run", str(tmp / "spec.yaml"), "--out", str(tmp_path / "new"), "--quiet", "--resume"]) == 2
    assert "nothing to resume" in capsys.readouterr().err


def test_a_nan_stops_the_run_with_a_clear_message_and_keeps_the_last_good_checkpoint(tmp_path, capsys, monkeypatch):
    spec = tmp_path / "s.yaml"
    spec.write_text("problems: [{kind: tabular, contexts: 3, actions: 3}]\n"
                    "algorithms: [{name: rebel, mode: sampled, pairs: 32}]\niterations: 20\n")
    real = REBEL.update

    def broken(self, policy, rng):
        step = real(self, policy, rng)
        self.calls = getattr(self, "calls", 0) + 1
        if self.calls == 9:
            return Step(policy.with_params(np.full_like(policy.params, np.nan)), None, 0)
        return step

    monkeypatch.setattr(REBEL, "update", broken)
    rc = main(["run", str(spec), "--out", str(tmp_path / "o"), "--quiet", "--checkpoint-every", "4"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1 and err[0].startswith("testbed: numerical error:") and "iteration 9" in err[0]
    assert not (tmp_path / "o").exists()
    from testbed.training.checkpoint import load_state
    [ckpt] = (tmp_path / "o.partial").glob("*.ckpt")
    state = load_state(ckpt)
    assert state.t == 8 and np.all(np.isfinite(state.policy.params))  # the last good checkpoint
