"""What every algorithm shares: a documented config dataclass and the update interface."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch

from testbed.errors import InputError, choice, nonneg_number, positive_int, positive_number
from testbed.policies import Policy
from testbed.problems import TabularBandit


@dataclass
class Step:
    """What one update reports: the new policy, its loss (None where it has none), responses drawn (None in exact mode)."""

    policy: Policy
    loss: float | None
    samples: int | None


class Algorithm:
    """An update rule. ``update(policy, rng)`` returns a :class:`Step`; state lives on the object."""

    name = ""
    Config: type = object
    problem_kind = "reward"  # the problems it runs on: "reward" (tabular/linear) or "preference"
    report_iterate = "last"  # the iterate its theory is about ("last" or "avg"); plots of final policies use it

    def __init__(self, config, problem: TabularBandit, rng: np.random.Generator):
        self.config, self.problem = config, problem

    def update(self, policy: Policy, rng: np.random.Generator) -> Step:
        raise NotImplementedError


def check_pairing(cls: type[Algorithm], problem, where: str) -> None:
    """A preference algorithm needs a preference problem, a reward algorithm a reward problem."""
    kind = "preference" if getattr(problem, "kind", "") == "preference" else "reward"
    if cls.problem_kind != kind:
        raise InputError(f"{where}: algorithm {cls.name!r} runs on {cls.problem_kind} problems, "
                         f"but problem {problem.name!r} is a {kind} problem")


def build_config(cls: type, params: dict, where: str):
    """Build and validate a config dataclass from a dict, naming the bad field on error."""
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(params) - fields)
    if unknown:
        raise InputError(f"{where}: unknown parameter(s) {unknown}; expected some of {sorted(fields)}")
    cfg = cls(**params)
    for f in dataclasses.fields(cls):
        v = getattr(cfg, f.name)
        meta = f.metadata
        field = f"{where}.{f.name}"
        if "choices" in meta:
            choice(field, v, meta["choices"])
        elif meta.get("check") == "positive":
            setattr(cfg, f.name, positive_number(field, v))
        elif meta.get("check") == "nonneg":
            setattr(cfg, f.name, nonneg_number(field, v))
        elif meta.get("check") == "positive_int":
            positive_int(field, v)
    if hasattr(cfg, "validate"):
        cfg.validate(where)
    return cfg


def positive(default, doc: str):
    return dataclasses.field(default=default, metadata={"check": "positive", "doc": doc})


def nonneg(default, doc: str):
    return dataclasses.field(default=default, metadata={"check": "nonneg", "doc": doc})


def count(default, doc: str):
    return dataclasses.field(default=default, metadata={"check": "positive_int", "doc": doc})


def one_of(default, choices: tuple[str, ...], doc: str):
    return dataclasses.field(default=default, metadata={"choices": choices, "doc": doc})


def adam_fit(policy: Policy, loss_fn, n: int, epochs: int, minibatch: int, lr: float,
             rng: np.random.Generator) -> tuple[Policy, float]:
    """K epochs of minibatch Adam on ``loss_fn(theta, idx)``, reshuffled each epoch, from theta_t.

    Returns the new policy and the full-batch loss at the end.
    """
    theta = torch.tensor(policy.params, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adam([theta], lr=lr)
    for _ in range(epochs):
        perm = rng.permutation(n)
        for start in range(0, n, minibatch):
            opt.zero_grad()
            loss_fn(theta, perm[start:start + minibatch]).backward()
            opt.step()
    with torch.no_grad():
        final = float(loss_fn(theta, np.arange(n)))
    return policy.with_params(theta.detach().numpy().copy()), final
