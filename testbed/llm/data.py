"""Text datasets for the LM track, in the ecosystem's (TRL) column convention.

JSONL files, one object per line: ``prompt`` only (prompt sets for online algorithms),
``prompt``/``chosen``/``rejected`` (DPO, reward-model training) or ``prompt``/``completion`` (SFT).
Responses are tokenised with an EOS appended and right-padded; prompts are left-padded.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from testbed.errors import InputError
from testbed.io import read_jsonl


def encode_responses(tokenizer, texts: list[str], length: int | None = None) -> torch.Tensor:
    """Token ids of each text followed by EOS, right-padded to a common length [N, L]."""
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    ids = [tokenizer(t, add_special_tokens=False)["input_ids"] + [eos] for t in texts]
    L = length or max(len(x) for x in ids)
    return torch.tensor([(x + [pad] * L)[:L] for x in ids], dtype=torch.long)


def check_prompts(tokenizer, prompts: list[str], where: str) -> None:
    """A one-line InputError for the first prompt that tokenises to no tokens: the first response token would have
    nothing to be conditioned on (generate and the log-prob forward would then disagree on its positions)."""
    for i, ids in enumerate(tokenizer(prompts)["input_ids"] if prompts else []):
        if not ids:
            raise InputError(f"{where}: prompt {i + 1} ({prompts[i]!r}) has no tokens; every prompt needs at least one")


def encode_prompts(policy, prompts: list[str], max_length: int | None):
    return policy.encode(prompts, max_length)


def load_pairs(path, policy, max_prompt_length: int | None = None) -> dict:
    rows = read_jsonl(path, ("prompt", "chosen", "rejected"))
    q, qm = encode_prompts(policy, [r["prompt"] for r in rows], max_prompt_length)
    resp = encode_responses(policy.tokenizer, [r["chosen"] for r in rows] + [r["rejected"] for r in rows])
    n = len(rows)
    return {"query": q, "query_mask": qm, "chosen": resp[:n].to(q.device), "rejected": resp[n:].to(q.device)}


def load_completions(path, policy, max_prompt_length: int | None = None) -> dict:
    rows = read_jsonl(path, ("prompt", "completion"))
    q, qm = encode_prompts(policy, [r["prompt"] for r in rows], max_prompt_length)
    return {"query": q, "query_mask": qm,
            "completion": encode_responses(policy.tokenizer, [r["completion"] for r in rows]).to(q.device)}


def load_prompts(path) -> list[str]:
    return [r["prompt"] for r in read_jsonl(path, ("prompt",))]


def write_jsonl(path: str | Path, rows: list[dict]) -> None:
    from testbed.io import atomic_write_text
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))
