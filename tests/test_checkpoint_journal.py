"""Repeated checkpoints of a growing state append only what is new (testbed/training/journal.py).

Before, every save re-serialised a run's whole rows and wall times: experiments/pref_exploitability.yaml (2000
iterations, a row at each, a checkpoint every 50) spent 23 s of its 30 s in ``save_state``. Now a
:class:`Checkpointer` appends each save's new rows to the sidecar ``<path>.log`` and the ``.npz`` (still written
atomically, the one commit point) records the sidecar's committed length. Checked here: many saves load back
exactly whatever happens to the lists between saves; a crash at any point (garbage past the committed length, a
save that dies before its ``.npz`` is renamed) leaves the previous state loadable and the next save exact; each
save writes bytes in proportion to the new rows only; an interrupted run resumed from a sidecar gives the same files.
"""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from testbed.algorithms import REBEL
from testbed.cli import main
from testbed.training import checkpoint, journal
from testbed.training.checkpoint import CheckpointError, load_state, sidecar
from testbed.training.journal import JOURNAL_MIN, Checkpointer, remove_checkpoint
from tests.test_checkpoint_records import same
from tests.test_run_safety import interrupt


def row(t: int, loss=None) -> dict:
    return {"run_id": "r-s0", "iteration": t, "loss": 0.5 * t if loss is None else loss, "samples": None,
            "ok": t % 2 == 0}


def check(path, state) -> None:
    back = load_state(path)
    assert same(back["rows"], state["rows"]) and same(back["wall"], state["wall"])
    assert same(back["stack"], state["stack"])
    assert back["rng"].bit_generator.state == state["rng"].bit_generator.state
    assert back["last"] is back["rows"][-1]  # a record the state shares stays one object


def grown(state, t0: int, n: int) -> None:
    for t in range(t0, t0 + n):
        state["rows"].append(row(t))
        state["wall"].append(0.001 * t)
        for s, rows in enumerate(state["stack"]):
            rows.append(row(t) | {"seed": s})
    state["rng"].normal(size=3)
    state["last"] = state["rows"][-1]


def fresh() -> dict:
    return {"rows": [], "wall": [], "stack": [[], []], "rng": np.random.default_rng(3), "last": None}


def test_many_saves_of_a_growing_state_load_back_exactly_and_use_the_sidecar(tmp_path):
    path, state, ck = tmp_path / "s.ckpt", fresh(), Checkpointer(tmp_path / "s.ckpt")
    for k in range(12):
        grown(state, 50 * k, 50)
        ck.save(state)
        check(path, state)
    with np.load(path) as z:
        tree = z[checkpoint.TREE].tobytes().decode()
    assert tree.count('"journal":') == 1 + 4  # rows, wall and the stack's two lists are in the sidecar
    assert os.path.getsize(path) < 4000 and os.path.getsize(sidecar(path)) > 12 * 50 * 3 * 60


OPS = st.lists(st.sampled_from(["grow", "grow", "pop", "swap_last", "swap_middle", "replace", "copy", "nan",
                                "shared", "clear"]), min_size=1, max_size=10)


@settings(max_examples=60, deadline=None)
@given(ops=OPS)
def test_lists_replaced_shrunk_or_changed_between_saves_load_back_exactly(tmp_path_factory, ops):
    path = tmp_path_factory.mktemp("j") / "s.ckpt"
    state, ck = fresh(), Checkpointer(path)
    grown(state, 0, JOURNAL_MIN + 3)
    ck.save(state)
    for t, op in enumerate(ops, 1000):
        rows = state["rows"]
        if op == "grow":
            grown(state, t, 7)
        elif op == "pop" and len(rows) > 1:
            rows.pop()
            state["wall"].pop()
        elif op == "swap_last":
            rows[-1] = row(-t)
        elif op == "swap_middle":
            rows[len(rows) // 2] = row(-t)
            state["wall"][len(rows) // 2] = -1.0
        elif op == "replace":
            state["rows"] = [row(-i) for i in range(len(rows))]
        elif op == "copy":
            state["rows"], state["wall"] = list(rows), list(state["wall"])
        elif op == "nan":
            rows.append(row(t, float("nan")))
            state["wall"].append(float("inf"))
        elif op == "shared":  # a record of one list appended to another
            state["stack"][0].append(rows[0])
        elif op == "clear":
            state["stack"][1] = []
        state["last"] = state["rows"][-1]
        ck.save(state)
        check(path, state)
        if op == "shared":
            back = load_state(path)
            assert back["stack"][0][-1] is back["rows"][0]
    resumed = Checkpointer(path)
    state = resumed.load()
    grown(state, 5000, 3)
    resumed.save(state)
    check(path, state)


def test_a_record_stored_before_its_list_keeps_its_identity(tmp_path):
    state = fresh()
    grown(state, 0, JOURNAL_MIN + 1)
    ck = Checkpointer(tmp_path / "s.ckpt")
    ck.save(state)
    for t in (100, 200):
        grown(state, t, 5)
        ck.save({"first": state["rows"][3], **state})  # walked before "rows"
        back = load_state(tmp_path / "s.ckpt")
        assert back["first"] is back["rows"][3] and same(back["rows"], state["rows"])


@pytest.mark.parametrize("into", ["rows", "stack"])
def test_a_record_in_two_journalled_lists_stays_one_object(tmp_path, into):
    state = fresh()
    grown(state, 0, JOURNAL_MIN + 1)
    ck = Checkpointer(tmp_path / "s.ckpt")
    ck.save(state)
    source = state["stack"][0] if into == "rows" else state["rows"]
    target = state["rows"] if into == "rows" else state["stack"][0]
    target.append(source[2])  # "rows" is walked before "stack"
    state["last"] = state["rows"][-1]
    for t in (100, 200, 300):
        ck.save(state)
        back = load_state(tmp_path / "s.ckpt")
        if into == "rows":
            assert back["rows"][JOURNAL_MIN + 1] is back["stack"][0][2]
        else:
            assert back["stack"][0][JOURNAL_MIN + 1] is back["rows"][2]
        check(tmp_path / "s.ckpt", state)
        grown(state, t, 5)


def test_a_crash_mid_append_or_before_the_commit_leaves_the_previous_state(tmp_path, monkeypatch):
    path, state = tmp_path / "s.ckpt", fresh()
    ck = Checkpointer(path)
    for k in range(3):
        grown(state, 50 * k, 50)
        ck.save(state)
    committed = json.loads(json.dumps(load_state(path)["rows"]))
    with open(sidecar(path), "ab") as f:  # a killed append: half a line, then garbage
        f.write(b'{"list":0,"items":[{"iteration":9')
    assert same(load_state(path)["rows"], committed)

    def killed(*args):  # dies after the sidecar is appended, before the .npz is renamed into place
        raise KeyboardInterrupt

    grown(state, 150, 50)
    with monkeypatch.context() as m:
        m.setattr(checkpoint, "save_npz", killed)
        with pytest.raises(KeyboardInterrupt):
            ck.save(state)
    assert os.path.getsize(sidecar(path)) > json.loads(_tree(path))["journal"]  # the uncommitted lines are there
    assert same(load_state(path)["rows"], committed)
    ck.save(state)  # the same saver goes on
    check(path, state)
    with open(sidecar(path), "ab") as f:
        f.write(b"\x00garbage\n")
    resumed = Checkpointer(path)  # a new process resumes
    state = resumed.load()
    grown(state, 200, 50)
    resumed.save(state)
    check(path, state)
    remove_checkpoint(path)
    assert not path.exists() and not sidecar(path).exists()


def _tree(path) -> str:
    with np.load(path) as z:
        return z[checkpoint.TREE].tobytes().decode()


def test_each_save_writes_bytes_in_proportion_to_its_new_rows(tmp_path):
    path, state, ck = tmp_path / "s.ckpt", fresh(), Checkpointer(tmp_path / "s.ckpt")
    sizes, npz = [], []
    for k in range(20):
        before = os.path.getsize(sidecar(path)) if sidecar(path).exists() else 0
        new = [row(t) for t in range(50 * k, 50 * k + 50)]
        state["rows"] += new
        state["wall"] += [1.0] * 50
        state["last"] = state["rows"][-1]
        ck.save(state)
        sizes.append(os.path.getsize(sidecar(path)) - before)
        npz.append(os.path.getsize(path))
        rows_line = len(json.dumps(new, separators=(",", ":")))
        assert rows_line < sizes[-1] < rows_line + 50 * 4 + 100  # the new rows, the new wall times, two headers
    assert max(npz) - min(npz) < 64  # the .npz does not grow with the rows
    assert max(sizes[1:]) - min(sizes[1:]) < 0.05 * min(sizes[1:])  # the same for every save: linear in all


def test_a_run_resumed_from_its_sidecar_gives_the_same_files(tmp_path, monkeypatch, capsys):
    spec = tmp_path / "spec.yaml"
    spec.write_text("problems: [{kind: tabular, contexts: 3, actions: 4, seed: 1}]\n"
                    "algorithms: [{name: rebel, mode: sampled, pairs: 16, eta: 1.0}]\niterations: 100\nseeds: 2\n")
    assert main(["run", str(spec), "--out", str(tmp_path / "ref"), "--quiet", "--no-batch"]) == 0
    with monkeypatch.context() as m:
        interrupt(m, REBEL, 90)
        assert main(["run", str(spec), "--out", str(tmp_path / "out"), "--quiet", "--checkpoint-every", "40",
                     "--no-batch"]) == 130
    capsys.readouterr()
    logs = sorted((tmp_path / "out.partial").glob("*.ckpt.log"))
    assert len(logs) == 1 and logs[0].stat().st_size > 0
    with open(logs[0], "ab") as f:
        f.write(b'{"list":0,"it')  # and a crash mid-append before that
    assert main(["run", str(spec), "--out", str(tmp_path / "out"), "--quiet", "--resume", "--checkpoint-every", "40",
                 "--no-batch"]) == 0
    for name in ("metrics.csv", "policies.npz"):
        assert (tmp_path / "out" / name).read_bytes() == (tmp_path / "ref" / name).read_bytes()
    assert not (tmp_path / "out.partial").exists()


def test_a_sidecar_short_of_its_committed_length_or_not_lines_of_lists_is_refused(tmp_path):
    path, state = tmp_path / "s.ckpt", fresh()
    grown(state, 0, 40)
    Checkpointer(path).save(state)
    data = sidecar(path).read_bytes()
    for bad in (data[:-5], b"[1, 2]\n".ljust(len(data) - 1) + b"\n", b"\xff" * len(data)):
        sidecar(path).write_bytes(bad)
        with pytest.raises(CheckpointError, match="not a data-only testbed checkpoint"):
            load_state(path)
    sidecar(path).unlink()
    with pytest.raises(CheckpointError, match="sidecar"):
        load_state(path)
    ck = Checkpointer(path)
    ck.save(state)  # a saver that finds the sidecar gone writes it again
    check(path, state)


def test_a_sidecar_mostly_of_replaced_lists_is_emptied(tmp_path, monkeypatch):
    monkeypatch.setattr(journal, "COMPACT_MIN", 0)
    path, state, ck = tmp_path / "s.ckpt", fresh(), Checkpointer(tmp_path / "s.ckpt")
    grown(state, 0, 40)
    sizes = []
    for _ in range(8):
        state["rows"] = [dict(r) for r in state["rows"]]  # a new list of new records each time: all dead weight
        state["last"] = state["rows"][-1]
        ck.save(state)
        check(path, state)
        sizes.append(os.path.getsize(sidecar(path)) if sidecar(path).exists() else 0)
    assert max(sizes) < 3 * sizes[0]


def test_a_nan_elsewhere_in_the_state_keeps_the_rows_in_the_sidecar(tmp_path):
    path, state = tmp_path / "s.ckpt", fresh()
    grown(state, 0, 40)
    state["odd"] = [{"loss": float("nan")}]  # sends save_state's tree to its second walk (no NaN in JSON)
    Checkpointer(path).save(state)
    check(path, state)
    assert math.isnan(load_state(path)["odd"][0]["loss"])
    assert _tree(path).count('"journal":') == 1 + 4
