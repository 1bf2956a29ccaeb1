"""The LM ``train`` block also speaks Hugging Face ``TrainingArguments`` names (issue 13, item 6): a spec written
with them resolves to the same configuration as one written with ours, field by field; giving both names of one
setting is a one-line error naming both."""

import dataclasses
import json

import pytest

pytest.importorskip("transformers")

import torch  # noqa: E402
import yaml  # noqa: E402
from llm_helpers import toy_spec  # noqa: E402

from testbed.cli import main  # noqa: E402
from testbed.errors import InputError  # noqa: E402
from testbed.llm.spec import HF_TRAIN_NAMES, parse_lm_spec  # noqa: E402


def spec_with(algorithm: dict, train: dict, drop=("iterations", "minibatch", "lr"), world=None, **top):
    raw = toy_spec(algorithm)
    for k in drop:
        raw["train"].pop(k, None)
    raw["train"].update(train)
    raw.update(top)
    return parse_lm_spec(raw, world=world)


def assert_same_resolved(a, b):
    for f in dataclasses.fields(a.train):
        assert getattr(a.train, f.name) == getattr(b.train, f.name), f.name
    assert [(n, dataclasses.asdict(c)) for n, c, _ in a.algorithms] == [(n, dataclasses.asdict(c)) for n, c, _ in b.algorithms]


@pytest.mark.parametrize("world", [1, 2])
def test_hugging_face_names_resolve_to_the_same_train_config_as_ours(world):
    """64 toy prompts, batch 32: 3 epochs are 3·64/32 = 6 iterations; per-device micro-batches of 4 items with 2
    accumulation steps on `world` processes are minibatches of 4·2·world items."""
    ours = spec_with({"name": "rebel"}, {"iterations": 6, "minibatch": 8 * world, "grad_accum": 2, "lr": 3e-3,
                                         "adam_eps": 1e-6}, world=world)
    hf = spec_with({"name": "rebel"}, {"num_train_epochs": 3, "per_device_train_batch_size": 4,
                                       "gradient_accumulation_steps": 2, "learning_rate": 3e-3, "adam_epsilon": 1e-6},
                   world=world)
    assert_same_resolved(ours, hf)
    assert (hf.train.iterations, hf.train.minibatch, hf.train.grad_accum) == (6, 8 * world, 2)


@pytest.mark.parametrize("epochs, iterations", [(1, 2), (1.5, 3), (2.1, 5), (0.1, 1), (0.5, 1), (10, 20)])
def test_num_train_epochs_is_passes_over_the_prompts(epochs, iterations):
    """iterations = ⌈epochs · 64 prompts / 32 per batch⌉ (the loop reads the next batch of a reshuffled pass; the last
    iteration may run into the next pass, as HF's max_steps = ⌈epochs · steps per epoch⌉)."""
    assert spec_with({"name": "rebel"}, {"num_train_epochs": epochs}).train.iterations == iterations


def test_num_train_epochs_of_an_offline_algorithm_counts_its_dataset_rows(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"p{i}", "chosen": "good", "rejected": "bad"}) + "\n" for i in range(40)))
    spec = spec_with({"name": "dpo", "dataset": str(path)}, {"num_train_epochs": 2, "batch": 8, "minibatch": 8},
                     drop=("iterations",))
    assert spec.train.iterations == 2 * 40 // 8
    raw = toy_spec({"name": "dpo", "dataset": str(path)})
    raw["algorithms"].append({"name": "rebel"})
    raw["train"].pop("iterations")
    raw["train"]["num_train_epochs"] = 1
    with pytest.raises(InputError, match=r"different sizes \(algorithms\[0\]\.dataset: 40 rows, prompts: 64 rows\)"):
        parse_lm_spec(raw)


def test_num_train_epochs_needs_a_data_size_known_before_the_run():
    with pytest.raises(InputError, match="prompt set whose size is known"):
        spec_with({"name": "rebel"}, {"num_train_epochs": 1}, prompts={"hf_dataset": "some/prompts"})


def test_per_device_batch_is_the_micro_batch_each_backward_pass_sees():
    """HF's per_device_train_batch_size is the batch of one forward/backward pass on one process: with 2 accumulation
    steps, REBEL's 16 pairs per iteration make 16 / (4·2) = 2 optimiser steps of 2 micro-batches of 4 pairs (8
    sequences) each."""
    from testbed.llm.train import build

    spec = spec_with({"name": "rebel", "epochs": 1}, {"per_device_train_batch_size": 4, "gradient_accumulation_steps": 2,
                                                      "batch": 16})
    name, cfg, _ = spec.algorithms[0]
    ctx, alg = build(spec, name, cfg, 0)
    steps, sizes = [], []
    step, logprobs = ctx.optimizer.optimizer.step, ctx.policy.logprobs

    def counting_step(*a, **k):
        steps.append(1)
        return step(*a, **k)

    def sized(q, qm, y, model=None):
        if torch.is_grad_enabled():
            sizes.append(len(y))
        return logprobs(q, qm, y, model)

    ctx.optimizer.optimizer.step, ctx.policy.logprobs = counting_step, sized
    q, qm = ctx.policy.encode(["good cat", "red dog sun", "one", "blue moon up down"] * 4)
    alg.lm_update(q, qm)
    assert len(steps) == 2 and sizes == [2 * 4] * 4


def _cli_error(tmp_path, capsys, train: dict, drop=()) -> str:
    raw = toy_spec({"name": "rebel"})
    for k in drop:
        raw["train"].pop(k)
    raw["train"].update(train)
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["llm", "run", str(path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("testbed: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("hf, ours", sorted(HF_TRAIN_NAMES.items()))
def test_giving_a_hugging_face_name_and_ours_is_a_one_line_error_naming_both(tmp_path, capsys, hf, ours):
    value = {"lr": 1e-3, "adam_eps": 1e-6, "grad_accum": 2, "minibatch": 16, "iterations": 4}[ours]
    err = _cli_error(tmp_path, capsys, {hf: value, ours: value})
    assert f"train: {hf} (the Hugging Face name) and {ours} set the same thing; give one of them" in err


@pytest.mark.parametrize("hf, value, message", [("learning_rate", -1, "train.learning_rate must be a positive number"),
                                                ("per_device_train_batch_size", 0, "train.per_device_train_batch_size"),
                                                ("num_train_epochs", "two", "train.num_train_epochs must be a positive")])
def test_a_bad_hugging_face_value_is_reported_under_its_own_name(tmp_path, capsys, hf, value, message):
    assert message in _cli_error(tmp_path, capsys, {hf: value}, drop=(HF_TRAIN_NAMES[hf],))
