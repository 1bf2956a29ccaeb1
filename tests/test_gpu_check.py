"""``python tests/gpu/check.py --device cpu --tiny`` (issue 18): exit code 0 and a JSON whose numbers agree with
themselves and with closed forms computed here."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("transformers")
pytest.importorskip("peft")

ROOT = Path(__file__).resolve().parents[1]


def test_the_cpu_tiny_check_passes_and_its_json_is_consistent(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), "TESTBED_TORCH_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / "tests/gpu/check.py"), "--device", "cpu", "--tiny",
                           "--out", str(tmp_path)], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-2000:]
    res = json.loads((tmp_path / "check.json").read_text())
    assert (tmp_path / "check.md").read_text().startswith("GPU check")
    checks = res["numerics"]["checks"]
    assert set(checks) >= {"fp32_cpu_vs_float64_logprobs", "bf16_device_vs_fp32_logprobs", "loss_vs_closed_form",
                           "sgd_step_decrease_vs_lr_g2"}
    for k, c in checks.items():
        assert c["value"] <= c["tolerance"] and c["ok"], k
    assert checks["fp32_cpu_vs_float64_logprobs"]["tolerance"] == 1e-5
    # bf16 does round (a nonzero gap) and the step lowers the loss
    assert checks["bf16_device_vs_fp32_logprobs"]["value"] > 0
    assert res["numerics"]["loss_after_step"] < res["numerics"]["loss"]
    steps = res["steps"]
    assert set(steps) == {"rebel", "ppo", "dpo", "rloo"}
    # LoRA r=8 on c_attn (32 -> 96) of both layers: 2 * 8 * (32 + 96) trainable parameters in the policy
    assert steps["rebel"]["trainable_parameters"] == 2 * 8 * (32 + 96)
    assert steps["ppo"]["trainable_parameters"] > steps["rebel"]["trainable_parameters"]  # + the critic
    for s in steps.values():
        assert 0 < s["generation_tokens"] <= s["prompts"] * s["new_tokens"]
        assert s["seconds_per_step"] > 0 and s["generation_tokens_per_s"] > 0
    assert res["ratios"]["rebel_ppo_time"] == steps["rebel"]["seconds_per_step"] / steps["ppo"]["seconds_per_step"]
    mem = res["ratios"]["rebel_ppo_memory"]
    assert mem is None if steps["ppo"]["peak_memory_mb"] == 0 else \
        mem == steps["rebel"]["peak_memory_mb"] / steps["ppo"]["peak_memory_mb"]
