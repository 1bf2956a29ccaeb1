"""Reruns, resumes and concurrent runs (issue 17, items 3, 4, 5, 9 and 10).

* a resume compares the resolved content of the spec, not where it was read from (item 3); a changed spec
  is refused naming the field, and ``--reuse`` keeps the work of the runs that did not change;
* every input file's sha256 is recorded in config.yaml and a resume refuses an edited one (item 4);
* a NaN loss or metric stops the run with one line naming the quantity and the iteration, and names the
  last good checkpoint only when it exists (item 5);
* a lock on the output folder refuses a second concurrent run naming the PID that holds it (item 9);
* the leftovers of killed runs are removed on the next start, and output files respect the umask (item 10).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from testbed.algorithms import NPG, REBEL
from testbed.cli import main

SPEC = """
problems: [{kind: tabular, contexts: 3, actions: 4, seed: 1}]
algorithms:
  - {name: npg, mode: sampled, samples: 32}
  - {name: rebel, mode: sampled, pairs: 32, eta: 1.0}
iterations: 12
"""


def interrupt(monkeypatch, cls, at: int) -> None:
    """Make ``cls``'s update raise KeyboardInterrupt (as Ctrl-C would) on its ``at``-th call."""
    real = cls.update
    calls = []

    def update(self, policy, rng):
        calls.append(1)
        if len(calls) == at:
            raise KeyboardInterrupt
        return real(self, policy, rng)

    monkeypatch.setattr(cls, "update", update)


def count_calls(monkeypatch, cls) -> list:
    calls: list = []
    real = cls.update
    monkeypatch.setattr(cls, "update", lambda self, policy, rng: calls.append(1) or real(self, policy, rng))
    return calls


def one_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


@pytest.fixture
def interrupted(tmp_path, monkeypatch, capsys):
    """An uninterrupted reference run, and the same spec interrupted in its second run (REBEL) after a
    checkpoint at iteration 4: <out>.partial holds NPG's finished run and REBEL's checkpoint."""
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC)
    assert main(["run", str(spec), "--out", str(tmp_path / "ref"), "--quiet"]) == 0
    with monkeypatch.context() as m:
        interrupt(m, REBEL, 7)
        assert main(["run", str(spec), "--out", str(tmp_path / "out"), "--quiet", "--checkpoint-every", "4"]) == 130
    capsys.readouterr()
    partial = tmp_path / "out.partial"
    assert sorted(p.suffix for p in partial.iterdir()) == [".ckpt", ".done", ".yaml"]
    return spec


def test_the_same_spec_resumes_by_absolute_path_and_from_another_folder(tmp_path, interrupted, monkeypatch):
    """Before: '--resume: the spec changed' (config.yaml recorded the path the spec was given by)."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    npg, rebel = count_calls(monkeypatch, NPG), count_calls(monkeypatch, REBEL)
    assert main(["run", os.path.relpath(interrupted, elsewhere), "--out", str(tmp_path / "out"), "--quiet",
                 "--resume", "--checkpoint-every", "4"]) == 0
    assert len(npg) == 0 and len(rebel) == 12 - 4  # NPG's run loaded, REBEL's continued from iteration 4
    assert (tmp_path / "out" / "metrics.csv").read_bytes() == (tmp_path / "ref" / "metrics.csv").read_bytes()
    assert (tmp_path / "out" / "policies.npz").read_bytes() == (tmp_path / "ref" / "policies.npz").read_bytes()
    a, b = (yaml.safe_load((tmp_path / d / "config.yaml").read_text()) for d in ("ref", "out"))
    assert a.pop("source") != b.pop("source") and a == b


def test_a_changed_spec_is_refused_naming_the_field_and_reuse_keeps_the_unchanged_runs(tmp_path, interrupted,
                                                                                        monkeypatch, capsys):
    changed = interrupted  # the user edits the spec between the interruption and the resume
    changed.write_text(SPEC.replace("eta: 1.0", "eta: 2.0"))
    rc = main(["run", str(changed), "--out", str(tmp_path / "out"), "--quiet", "--resume"])
    line = one_line(capsys)
    assert rc == 2 and "the spec changed (field 'runs')" in line and "--reuse" in line
    assert sorted(p.suffix for p in (tmp_path / "out.partial").iterdir()) == [".ckpt", ".done", ".yaml"]
    npg, rebel = count_calls(monkeypatch, NPG), count_calls(monkeypatch, REBEL)
    assert main(["run", str(changed), "--out", str(tmp_path / "out"), "--quiet", "--reuse"]) == 0
    assert len(npg) == 0 and len(rebel) == 12  # NPG unchanged: loaded; REBEL at eta 2 recomputed from the start
    monkeypatch.undo()
    assert main(["run", str(changed), "--out", str(tmp_path / "fresh"), "--quiet"]) == 0
    assert (tmp_path / "out" / "metrics.csv").read_bytes() == (tmp_path / "fresh" / "metrics.csv").read_bytes()


def instance(path: Path, rewards) -> None:
    np.savez(path, rewards=np.asarray(rewards, dtype=float))


def test_input_files_are_hashed_and_an_edited_one_refuses_the_resume(tmp_path, monkeypatch, capsys):
    inst = tmp_path / "inst.npz"
    instance(inst, [[0.0, 1.0, 0.5, 0.1], [0.2, 0.3, 0.4, 0.1]])  # 2 x 4: not stacked with the 2 x 3 problem
    spec = tmp_path / "spec.yaml"
    spec.write_text("problems: [{file: inst.npz, name: mine}, {kind: tabular, contexts: 2, actions: 3}]\n"
                    "algorithms: [{name: rebel, mode: sampled, pairs: 16}]\niterations: 8\n")
    with monkeypatch.context() as m:
        interrupt(m, REBEL, 11)  # in the second problem's run: the first (the file's) is finished
        assert main(["run", str(spec), "--out", str(tmp_path / "out"), "--quiet", "--checkpoint-every", "2"]) == 130
    stored = yaml.safe_load((tmp_path / "out.partial" / "config.yaml").read_text())
    assert stored["inputs"] == {str(inst.resolve()): hashlib.sha256(inst.read_bytes()).hexdigest()}
    capsys.readouterr()
    instance(inst, [[0.0, 1.0, 0.9, 0.1], [0.2, 0.3, 0.4, 0.1]])  # edited between the kill and the resume
    rc = main(["run", str(spec), "--out", str(tmp_path / "out"), "--quiet", "--resume"])
    line = one_line(capsys)
    assert rc == 2 and f"input file {str(inst.resolve())!r} changed" in line and not (tmp_path / "out").exists()
    calls = count_calls(monkeypatch, REBEL)
    assert main(["run", str(spec), "--out", str(tmp_path / "out"), "--quiet", "--reuse"]) == 0
    assert len(calls) == 8 + 6  # the file's run recomputed; the other resumed from its checkpoint at iteration 2
    monkeypatch.undo()
    assert main(["run", str(spec), "--out", str(tmp_path / "fresh"), "--quiet"]) == 0
    assert (tmp_path / "out" / "metrics.csv").read_bytes() == (tmp_path / "fresh" / "metrics.csv").read_bytes()


def test_a_nan_loss_stops_the_run_in_one_line_and_names_no_checkpoint_that_does_not_exist(tmp_path, capsys):
    """Before: population DPO on a one-action problem wrote a NaN loss on every row and exited 0."""
    spec = tmp_path / "spec.yaml"
    spec.write_text("problems: [{kind: tabular, contexts: 2, actions: 1}]\n"
                    "algorithms: [{name: dpo, mode: population}]\niterations: 5\n")
    rc = main(["run", str(spec), "--out", str(tmp_path / "out"), "--quiet", "--checkpoint-every", "2"])
    line = one_line(capsys)  # no numpy warnings before it
    assert rc == 1 and line.startswith("testbed: numerical error: run ") and "the loss became nan at iteration 1" in line
    assert "no checkpoint was written" in line
    assert sorted(os.listdir(tmp_path)) == ["spec.yaml"]  # no output, no empty .partial, no lock, no temporary


def test_a_nan_in_one_member_of_a_stack_names_that_run(tmp_path, capsys, monkeypatch):
    from testbed.algorithms import Step

    spec = tmp_path / "spec.yaml"
    spec.write_text("problems: [{kind: tabular, contexts: 2, actions: 3}]\n"
                    "algorithms: [{name: rebel, mode: sampled, pairs: 20, eta: 1.0}]\nseeds: 3\niterations: 6\n")
    real = REBEL.update

    def update(self, policy, rng):
        step = real(self, policy, rng)
        self.calls = getattr(self, "calls", 0) + 1
        if self.calls == 5:
            params = np.array(step.policy.params)
            params.reshape(3, -1)[1, 0] = np.inf  # the stack's second member, seed 1
            return Step(step.policy.with_params(params), step.loss, step.samples, step.queries, step.extras)
        return step

    monkeypatch.setattr(REBEL, "update", update)
    rc = main(["run", str(spec), "--out", str(tmp_path / "out"), "--quiet", "--checkpoint-every", "2"])
    line = one_line(capsys)
    assert rc == 1 and ":s1: the policy parameters became " in line and " at iteration 5;" in line
    [ckpt] = (tmp_path / "out.partial").glob("*.ckpt")
    assert f"its last good checkpoint is {ckpt}" in line


def test_a_second_run_into_the_same_folder_is_refused_naming_the_pid_that_holds_it(tmp_path, capsys):
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom testbed.results import out_lock\n"
         f"with out_lock({str(tmp_path / 'out')!r}):\n    print('held', flush=True)\n    time.sleep(60)\n"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        for extra in ([], ["--resume"]):
            rc = main(["run", str(spec), "--out", str(tmp_path / "out"), "--quiet", *extra])
            line = one_line(capsys)
            assert rc == 2 and f"another run (PID {holder.pid}) is writing it" in line
        assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()
    finally:
        holder.kill()
        holder.wait()
    # the holder was killed: its lock went with it, and its lock file does not block the next run
    assert (tmp_path / ".out.lock").exists()
    assert main(["run", str(spec), "--out", str(tmp_path / "out"), "--quiet"]) == 0
    assert not (tmp_path / ".out.lock").exists()


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_leftovers_of_killed_runs_are_removed_on_the_next_start(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC)
    pid = dead_pid()
    for name in (f".out.tmp-{pid}", f".out.old-{pid}"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.csv").write_text("half-written\n")
    live = tmp_path / f".out.tmp-{os.getppid()}"  # a live process's folder (pytest's parent) is not touched
    live.mkdir()
    other = tmp_path / f".other.tmp-{pid}"  # another output's leftovers are that run's to clean
    other.mkdir()
    assert main(["run", str(spec), "--out", str(tmp_path / "out"), "--quiet"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([".other.tmp-" + str(pid), live.name, "out",
                                                                 "spec.yaml"])


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o002])
def test_output_files_respect_the_umask(tmp_path, mask):
    """Before: every output file was 0600 (tempfile.mkstemp's mode), whatever the umask."""
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC)
    old = os.umask(mask)
    try:
        assert main(["run", str(spec), "--out", str(tmp_path / "out"), "--quiet"]) == 0
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "out").iterdir()}
    assert modes and all(m == 0o666 & ~mask for m in modes.values()), modes
    assert (tmp_path / "out").stat().st_mode & 0o777 == 0o777 & ~mask


def test_the_lock_removes_the_folders_it_made_when_the_run_writes_nothing(tmp_path, capsys):
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC)
    rc = main(["run", str(spec), "--out", str(tmp_path / "a" / "b" / "out"), "--quiet", "--resume"])
    assert rc == 2 and "nothing to resume" in one_line(capsys)
    assert not (tmp_path / "a").exists()


def test_the_lock_file_names_its_holder_and_goes_on_release(tmp_path):
    """The lock is an flock on an open file: released when the run ends (or its process dies), no timeout."""
    from testbed.results import out_lock

    for _ in range(2):
        with out_lock(tmp_path / "out"):
            assert (tmp_path / ".out.lock").read_text().strip() == str(os.getpid())
        assert not (tmp_path / ".out.lock").exists()


def test_a_write_killed_mid_way_leaves_its_temporary_file_only_until_the_next_write(tmp_path):
    """SIGKILL inside ``atomic_write`` runs no clean-up: the target keeps its old bytes and the writer's
    ``.<name>.<pid>.XXXXXXXX.tmp`` stays. The next process that writes into the folder removes it (its writer is
    dead), but not the temporary file of a writer that still runs, nor one whose file name holds digits."""
    import signal
    import time

    from testbed.io import atomic_write, atomic_write_text

    target = tmp_path / "metrics.csv"
    atomic_write_text(target, "old\n")
    pid = os.fork()
    if pid == 0:  # the child starts a write and hangs in it
        def slow(p):
            p.write_text("half")
            time.sleep(60)
        try:
            atomic_write(target, slow)
        finally:
            os._exit(0)
    deadline = time.time() + 20
    while not [p for p in tmp_path.iterdir() if p.name.startswith(f".metrics.csv.{pid}.")] and time.time() < deadline:
        time.sleep(0.01)
    time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    left = [p.name for p in tmp_path.iterdir() if p.name != "metrics.csv"]
    assert len(left) == 1 and left[0].startswith(f".metrics.csv.{pid}.") and target.read_text() == "old\n"
    live = [tmp_path / f".metrics.csv.{os.getpid()}.abcd1234.tmp",  # a writer that still runs (this process)
            tmp_path / f".metrics.csv.{pid}.json.{os.getpid()}.abcd1234.tmp"]  # of 'metrics.csv.<dead pid>.json'
    for p in live:
        p.write_text("in progress")
    subprocess.run([sys.executable, "-c", f"from testbed.io import atomic_write_text; "
                    f"atomic_write_text({str(target)!r}, 'new\\n')"], check=True)
    assert target.read_text() == "new\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["metrics.csv", *(p.name for p in live)])
