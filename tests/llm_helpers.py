"""Shared helpers of the LM tests: tiny models and the toy task, built offline."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

TOY_SPEC = {
    "name": "toy", "model": {"name": "tiny:gpt2", "hidden": 32, "layers": 2, "heads": 2},
    "prompts": {"kind": "toy", "count": 64}, "eval_prompts": {"kind": "toy", "count": 48, "seed": 1},
    "reward": {"kind": "function", "name": "count_token", "token": "good"},
    "train": {"iterations": 10, "batch": 32, "minibatch": 16, "lr": 1e-2, "max_new_tokens": 6, "temperature": 1.0,
              "missing_eos_penalty": None, "eval_every": 5, "save": False},
}


def toy_spec(algorithm: dict, seeds=(0,), **train):
    import copy
    raw = copy.deepcopy(TOY_SPEC)
    raw["algorithms"] = [algorithm]
    raw["seeds"] = list(seeds)
    raw["train"].update(train)
    return raw


def prefers_good(queries, responses, references):
    """A pluggable judge (``judge: {module: llm_helpers:prefers_good}``): P(response beats reference) = 1 when it
    holds more "good" words, ½ on equal counts, else 0."""
    out = []
    for r, ref in zip(responses, references):
        a, b = r.split().count("good"), ref.split().count("good")
        out.append(1.0 if a > b else 0.5 if a == b else 0.0)
    return out
