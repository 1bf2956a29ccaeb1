"""The LM task and measurements: the reward (a function, a model, or the TL;DR study's learned reward),
the prompt source, and the peak-memory window every LM run reports."""

from __future__ import annotations

import ctypes
import gc
import resource

import torch

from testbed.llm.models import load_reward_model, reward_model_entry
from testbed.llm.rewards import FunctionReward, RewardModel, copy_prompt_reward, count_token_reward
from testbed.llm.spec import PROMPT_COUNT, LMSpec


def make_reward(spec: LMSpec, tokenizer, device, study=None):
    r = spec.reward
    if not r:
        return None
    if r["kind"] == "bradley_terry":
        return study.reward(tokenizer)
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    if r["kind"] == "function":
        if r.get("module"):
            import importlib
            mod, _, fn = r["module"].partition(":")
            return FunctionReward(getattr(importlib.import_module(mod), fn), pad, eos)
        if r["name"] == "count_token":
            tid = tokenizer.convert_tokens_to_ids(r.get("token", "good"))
            return FunctionReward(count_token_reward(tid, spec.train.max_new_tokens), pad, eos)
        return FunctionReward(copy_prompt_reward, pad, eos)
    model = load_reward_model(reward_model_entry(r))
    return RewardModel(model.to(device).requires_grad_(False), pad, eos)


def make_prompts(entry: dict) -> list[str]:
    from testbed.llm.toy import toy_prompts
    if entry.get("kind") == "tldr":
        from testbed.llm.tldr import make_prompts as tldr_prompts
        return tldr_prompts(entry.get("count", PROMPT_COUNT), entry.get("seed", 0))
    if "file" in entry:
        from testbed.llm.data import load_prompts
        return load_prompts(entry["file"])
    if "hf_dataset" in entry:
        import datasets  # GPU users with internet; not a dependency of the test install
        ds = datasets.load_dataset(entry["hf_dataset"], split=entry.get("split", "train"))
        if "count" in entry:  # the first `count` rows (an evaluation over a count-limited split)
            ds = ds.select(range(min(int(entry["count"]), len(ds))))
        return list(ds[entry.get("field", "prompt")])
    return toy_prompts(entry.get("count", PROMPT_COUNT), entry.get("seed", 0), entry.get("min_len", 2), entry.get("max_len", 4))


def _status_mb(field: str) -> float | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return None


def reset_peak_memory() -> float:
    """Start a new peak-memory window (freed memory returned to the OS first); return the baseline in MB."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated() / 2**20
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current resident set (Linux >= 4.0)
    except OSError:
        pass
    return _status_mb("VmRSS") or 0.0


def peak_memory_mb(base: float = 0.0) -> float:
    """Peak memory in MB since :func:`reset_peak_memory` (or process start), minus ``base``."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20 - base
    hwm = _status_mb("VmHWM")
    return (hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024) - base
