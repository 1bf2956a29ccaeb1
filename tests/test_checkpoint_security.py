"""Loading a run folder executes nothing (issue 17, item 1): checkpoints and finished-run files are data
only (testbed/training/checkpoint.py). A planted pickle payload — what `--resume` ran before, through
``pickle.load`` and ``torch.load(weights_only=False)`` — is refused with one line and does not run; a
data-only file naming a class outside testbed is refused; a real state round-trips exactly."""

from __future__ import annotations

import json
import os
import pickle
import zipfile
from collections import OrderedDict

import numpy as np
import pytest
import torch

from testbed.cli import main
from testbed.training.checkpoint import CheckpointError, load_state, save_state


class Payload:
    """Unpickling this runs a shell command (the classic pickle exploit)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


SPEC = """
problems: [{kind: tabular, contexts: 3, actions: 3}]
algorithms: [{name: rebel, mode: sampled, pairs: 16}]
iterations: 6
"""


@pytest.mark.parametrize("suffix", [".done", ".ckpt"])
def test_a_planted_pickle_payload_in_a_run_folder_is_refused_and_not_run(tmp_path, capsys, suffix):
    spec = tmp_path / "s.yaml"
    spec.write_text(SPEC)
    assert main(["run", str(spec), "--out", str(tmp_path / "full"), "--quiet"]) == 0
    partial = tmp_path / "out.partial"
    partial.mkdir()
    (partial / "config.yaml").write_bytes((tmp_path / "full" / "config.yaml").read_bytes())
    marker = tmp_path / "pwned"
    from testbed.experiments import load_spec
    from testbed.experiments.runner import group_key
    key = group_key(load_spec(spec), [0], {})  # the one run's name in the partial folder
    (partial / f"{key}{suffix}").write_bytes(pickle.dumps(Payload(marker)))
    torch.save({"t": Payload(marker)}, tmp_path / "lm.ckpt")  # what the LM track wrote and read before
    rc = main(["run", str(spec), "--out", str(tmp_path / "out"), "--quiet", "--resume", "--checkpoint-every", "2"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "not a data-only testbed checkpoint" in err[0] and f"{key}{suffix}" in err[0]
    with pytest.raises(CheckpointError, match="not a data-only"):
        load_state(tmp_path / "lm.ckpt")
    assert not marker.exists()  # the payload never ran
    assert not (tmp_path / "out").exists()


def test_a_data_only_file_naming_a_class_outside_testbed_is_refused(tmp_path):
    save_state(tmp_path / "ok.ckpt", {"x": 1})
    with zipfile.ZipFile(tmp_path / "ok.ckpt") as z:
        files = {n: z.read(n) for n in z.namelist()}
    for name in ("os:system", "subprocess:Popen", "testbed.io:Path", "builtins:eval"):
        tree = {"format": "testbed-checkpoint/1", "root": {"id": 0, "object": name, "attrs": {"id": 1, "dict": []}}}
        arr = np.frombuffer(json.dumps(tree).encode(), dtype=np.uint8)
        import io
        buf = io.BytesIO()
        np.lib.format.write_array(buf, arr, allow_pickle=False)
        with zipfile.ZipFile(tmp_path / "bad.ckpt", "w") as z:
            z.writestr("__tree__.npy", buf.getvalue())
        with pytest.raises(CheckpointError, match="not a testbed class"):
            load_state(tmp_path / "bad.ckpt")
    assert files  # the valid file was a zip of .npy members


def test_states_round_trip_exactly_with_types_aliasing_and_generators(tmp_path):
    from testbed.policies import TabularSoftmax

    rng = np.random.default_rng(np.random.SeedSequence(7).spawn(2)[1])
    rng.normal(size=3)
    shared = np.arange(6.0).reshape(2, 3)
    theta = torch.nn.Parameter(torch.linspace(0, 1, 5, dtype=torch.float64))
    state = {"rng": rng, "a": shared, "b": shared, "policy": TabularSoftmax(shared),
             "scalars": [np.float64(0.1), np.int64(3), 0.1, 2 ** 70, float("nan"), float("-inf"), True, None],
             "tuple": (1, "x"), (1, 2): "tuple key", 3: OrderedDict(z=1, a=2),
             "t": theta, "bf": torch.tensor([1.5, -2.25], dtype=torch.bfloat16), "grad": torch.zeros(2, requires_grad=True)}
    save_state(tmp_path / "s.ckpt", state)
    back = load_state(tmp_path / "s.ckpt")
    assert back["a"] is back["b"] and np.array_equal(back["a"], shared)
    assert np.array_equal(back["policy"].params, state["policy"].params)
    assert back["rng"].normal() == rng.normal()  # the generator continues where it stopped
    assert back["rng"].bit_generator.seed_seq.spawn_key == rng.bit_generator.seed_seq.spawn_key
    s = back["scalars"]
    assert type(s[0]) is np.float64 and s[0] == np.float64(0.1) and type(s[1]) is np.int64 and type(s[2]) is float
    assert s[3] == 2 ** 70 and np.isnan(s[4]) and s[5] == float("-inf") and s[6] is True and s[7] is None
    assert back["tuple"] == (1, "x") and back[(1, 2)] == "tuple key" and list(back[3]) == ["z", "a"]
    assert isinstance(back["t"], torch.nn.Parameter) and torch.equal(back["t"], theta)
    assert back["bf"].dtype == torch.bfloat16 and torch.equal(back["bf"], state["bf"])
    assert back["grad"].requires_grad


def test_a_state_holding_something_that_is_not_data_is_refused_when_saved(tmp_path):
    with pytest.raises(CheckpointError, match="cannot store"):
        save_state(tmp_path / "x.ckpt", {"f": lambda: 0})
    assert not (tmp_path / "x.ckpt").exists()
