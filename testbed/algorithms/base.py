"""What every algorithm shares: a documented config dataclass and the update interface."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from testbed.errors import InputError, choice, nonneg_int, nonneg_number, positive_int, positive_number
from testbed.policies import Policy, member
from testbed.problems import TabularBandit


@dataclass
class Step:
    """What one update reports: the new policy, its loss (None where it has none), responses drawn and
    reward/preference oracle queries made (None in exact mode), and algorithm-specific extras."""

    policy: Policy
    loss: float | None
    samples: int | None
    queries: int | None = None
    extras: dict = dataclasses.field(default_factory=dict)


class Algorithm:
    """An update rule. ``update(policy, rng)`` returns a :class:`Step`; state lives on the object.

    ``initial_samples`` / ``initial_queries``: responses drawn and oracle queries made before the
    first update (an offline dataset's), counted from iteration 0.
    """

    name = ""
    Config: type = object
    initial_samples = 0
    initial_queries = 0
    problem_kind = "reward"  # the problems it runs on: "reward" (tabular/linear) or "preference"
    report_iterate = "last"  # the iterate its theory is about ("last" or "avg"); plots of final policies use it

    def __init__(self, config, problem: TabularBandit, rng: np.random.Generator):
        self.config, self.problem = config, problem

    def update(self, policy: Policy, rng: np.random.Generator) -> Step:
        raise NotImplementedError

    @staticmethod
    def batchable(config, kind: str) -> bool:
        """Whether ``update`` also takes a stack of S policies of ``kind`` on a
        :class:`~testbed.problems.ProblemBatch` with a list of S generators (one per seed), giving
        member s bit-for-bit the update of the unstacked policy with generator s."""
        return False

    @staticmethod
    def check_policy(config, kind: str) -> str | None:
        """None if this configuration can update a policy of ``kind``; else what is needed instead."""
        return None

    @staticmethod
    def kl_target(config, problem) -> tuple[float, np.ndarray] | None:
        """The exact target that ``kl_reg_gap`` measures against: (c, ln pi_target) with
        kl_reg_gap = c·E_x KL(pi || pi_target), 0 at the algorithm's exact optimum; None: no such target
        (the column stays empty). On a stack of problems ln pi_target is [S, X, Y].

        Default (reward algorithms with KL shaping, J - beta·KL): c = beta = ``config.beta`` and
        pi_target = pi*_beta, so kl_reg_gap = J_beta(pi*_beta) - J_beta(pi); None for beta = 0."""
        beta = getattr(config, "beta", 0.0) or 0.0
        return (beta, problem.regularised_optimum_log(beta)) if beta > 0 else None

    @staticmethod
    def counted(config) -> bool:
        """Whether its runs report ``samples``/``queries`` (the counts its Steps and ``initial_*``
        give); False leaves both columns empty. Default: every mode but exact/population."""
        return getattr(config, "mode", "sampled") not in ("exact", "population")

    @staticmethod
    def check_problem(config, problem: TabularBandit) -> None:
        """Validate inputs that depend on the problem (e.g. a dataset's indices); raise InputError."""


def per_seed(draw, policy: Policy, rng, problem) -> tuple[np.ndarray, ...]:
    """``draw(policy, rng, problem)`` -> arrays, for one seed; for a stack (``rng`` a list of
    generators, ``problem`` a ProblemBatch) member by member, each from its own generator, stacked.
    Only random draws go through here; the computation on them runs on the whole stack."""
    if not isinstance(rng, list):
        return draw(policy, rng, problem)
    parts = [draw(None if policy is None else member(policy, s), g, problem.members[s]) for s, g in enumerate(rng)]
    return tuple(np.stack(a) for a in zip(*parts))


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
        elif meta.get("check") == "nonneg_int":
            nonneg_int(field, v)
        elif meta.get("check") == "bool" and not isinstance(v, bool):
            raise InputError(f"{field} must be true or false (got {v!r})")
        elif meta.get("check") == "unit_open":
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < 1:
                raise InputError(f"{field} must be a number in (0, 1) (got {v!r})")
            setattr(cfg, f.name, float(v))
        elif meta.get("check") == "path":
            if not isinstance(v, str):
                raise InputError(f"{field} must be a file path (got {v!r})")
            if v and not Path(v).is_file():
                raise InputError(f"{field}: file {v!r} does not exist")
    if hasattr(cfg, "validate"):
        cfg.validate(where)
    return cfg


def positive(default, doc: str):
    return dataclasses.field(default=default, metadata={"check": "positive", "doc": doc})


def nonneg(default, doc: str):
    return dataclasses.field(default=default, metadata={"check": "nonneg", "doc": doc})


def count(default, doc: str):
    return dataclasses.field(default=default, metadata={"check": "positive_int", "doc": doc})


def nonneg_count(default, doc: str):
    return dataclasses.field(default=default, metadata={"check": "nonneg_int", "doc": doc})


def one_of(default, choices: tuple[str, ...], doc: str):
    return dataclasses.field(default=default, metadata={"choices": choices, "doc": doc})


def flag(default: bool, doc: str):
    return dataclasses.field(default=default, metadata={"check": "bool", "doc": doc})


def unit_open(default: float, doc: str):
    return dataclasses.field(default=default, metadata={"check": "unit_open", "doc": doc})


def path(doc: str):
    """A file path ('' = none); relative paths in a spec are taken relative to the spec file."""
    return dataclasses.field(default="", metadata={"check": "path", "doc": doc})


def permutations(rng, n: int) -> np.ndarray:
    """A fresh permutation of range(n): [n] from one generator, [S, n] from a list (one per seed)."""
    return rng.permutation(n) if not isinstance(rng, list) else np.stack([g.permutation(n) for g in rng])


def adam_fit(policy: Policy, loss_fn, n: int, epochs: int, minibatch: int, lr: float,
             rng, state: dict | None = None) -> tuple[Policy, float | np.ndarray]:
    """K epochs of minibatch Adam on ``loss_fn(theta, idx)``, reshuffled each epoch, from theta_t.

    ``state`` (a dict the algorithm keeps) carries Adam's moments from one iteration to the next, as
    one optimiser over the whole run does in the official REBEL code and in CleanRL/TRL.
    Returns the new policy and the full-batch loss at the end.

    A stack of S policies (``rng`` a list of S generators) gets index arrays [S, m], one row per seed
    from its own generator, and ``loss_fn`` returns S losses; their sum is minimised. Each seed's
    gradient is then its own loss's, and Adam is elementwise, so member s follows exactly the
    trajectory it follows alone.
    """
    theta = torch.tensor(policy.params, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adam([theta], lr=lr)
    if state is not None and "adam" in state:
        opt.load_state_dict(state["adam"])
    for _ in range(epochs):
        perm = permutations(rng, n)
        for start in range(0, n, minibatch):
            opt.zero_grad()
            loss_fn(theta, perm[..., start:start + minibatch]).sum().backward()
            opt.step()
    if state is not None:
        state["adam"] = opt.state_dict()
    everything = np.arange(n) if not isinstance(rng, list) else np.tile(np.arange(n), (len(rng), 1))
    with torch.no_grad():
        final = loss_fn(theta, everything).numpy()
    return policy.with_params(theta.detach().numpy().copy()), final if final.ndim else float(final)


def take(a, idx: np.ndarray):
    """a[idx] along the last axis (numpy or torch): [N] by [m], or each seed's rows [S, N] by [S, m]."""
    if isinstance(a, np.ndarray):
        return np.take_along_axis(a, idx, axis=-1)
    return torch.take_along_dim(a, torch.as_tensor(idx), dim=-1)
