"""DeepSpeed's "auto" fields resolved from the spec (testbed/llm/distributed.py), and the result accepted by
DeepSpeed's own config parser where DeepSpeed imports (it runs without a GPU; not in the extras: it builds
against the installed torch)."""

from pathlib import Path

import pytest

from testbed.errors import InputError
from testbed.llm.distributed import read_deepspeed, resolve_deepspeed

ZERO2 = Path(__file__).resolve().parents[1] / "experiments" / "llm" / "ds_zero2.json"
PAPER = dict(micro=8, grad_accum=8, world=8, mixed_precision="bf16", max_grad_norm=1.0)  # 8 GPUs x 8 x 8


def test_the_auto_fields_come_from_the_spec():
    cfg = resolve_deepspeed(read_deepspeed(str(ZERO2), "accelerate.deepspeed"), **PAPER)
    assert cfg["train_micro_batch_size_per_gpu"] == 8 and cfg["gradient_accumulation_steps"] == 8
    assert cfg["train_batch_size"] == 8 * 8 * 8 and cfg["gradient_clipping"] == 1.0
    assert cfg["zero_optimization"]["stage"] == 2 and cfg["bf16"]["enabled"] is True
    assert "auto" not in repr(cfg)


def test_a_number_that_contradicts_the_spec_is_one_line():
    raw = {**read_deepspeed(str(ZERO2), "x"), "gradient_accumulation_steps": 4}
    with pytest.raises(InputError, match=r"gradient_accumulation_steps = 4 contradicts the spec, which gives 8"):
        resolve_deepspeed(raw, **PAPER)
    with pytest.raises(InputError, match=r"optimizer.params.lr is \"auto\""):
        resolve_deepspeed({**raw, "gradient_accumulation_steps": "auto", "optimizer": {"params": {"lr": "auto"}}}, **PAPER)


def test_deepspeed_parses_the_resolved_config_and_not_the_raw_one():
    pytest.importorskip("deepspeed")
    from deepspeed.runtime.config import DeepSpeedConfig

    cfg = resolve_deepspeed(read_deepspeed(str(ZERO2), "x"), **{**PAPER, "world": 1})
    c = DeepSpeedConfig(cfg)
    assert (c.train_batch_size, c.train_micro_batch_size_per_gpu, c.gradient_accumulation_steps) == (64, 8, 8)
    assert c.zero_optimization_stage == 2 and c.gradient_clipping == 1.0
    with pytest.raises(TypeError):  # what accelerate would hand DeepSpeed with no dataloader to fill "auto" from
        DeepSpeedConfig(read_deepspeed(str(ZERO2), "x"))
