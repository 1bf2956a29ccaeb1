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


SEQUENCE_TRACKS = ("lm", "diffusion")
"""The back-ends whose policies generate sequences (tokens; denoising steps) through a back-end object (``ctx``).
The diffusion back-end takes the LM back-end's config conventions: its fields and defaults (metadata ``lm``),
unless a field declares its own (metadata ``diffusion``)."""


class Algorithm:
    """One method, on every policy back-end it declares in ``tracks``.

    Bandit back-end: ``Algorithm(config, problem, rng)``; ``update(policy, rng)`` returns a :class:`Step`.
    LM back-end: ``Algorithm(config, backend, backend.rng)`` with an :class:`~testbed.llm.backend.LMBackend`
    (``backend.track == "lm"``); ``lm_update(query, query_mask)`` returns a :class:`Step` whose ``policy``
    is None (the model is updated in place) and whose ``extras`` are per-response statistics. Either way
    the update is collect → a pure loss of :mod:`testbed.losses` → the solver the back-end offers
    (exact / least squares / Adam for bandit policies; AdamW through accelerate for LMs). State lives on
    the object.

    Everything outside ``algorithms/`` learns about an algorithm from these declarations, never from
    its name: ``tracks``, ``problem_kind``, ``report_iterate``, ``maturity`` and ``tests`` (the README
    table), and the static methods below (the target kl_reg_gap measures, whether it needs a reward, a
    critic, prompts or pi_ref, sequences per item, responses per prompt, its theory bound).

    ``initial_samples`` / ``initial_queries``: responses drawn and oracle queries made before the
    first update (an offline dataset's), counted from iteration 0.
    """

    name = ""
    Config: type = object
    summary = ""  # one line for the algorithm table (testbed list --markdown)
    tracks: tuple[str, ...] = ("bandit",)  # policy back-ends it runs on: "bandit", "lm"
    maturity = "tested"  # "verified against theory" | "tested" | "experimental"
    tests: tuple[str, ...] = ()  # the named tests behind the maturity
    initial_samples = 0
    initial_queries = 0
    problem_kind = "reward"  # the problems it runs on: "reward" (tabular/linear) or "preference"
    report_iterate = "last"  # the iterate its theory is about ("last" or "avg"); plots of final policies use it

    def __init__(self, config, problem, rng):
        self.config, self.problem = config, problem
        self.ctx = problem if getattr(problem, "track", "bandit") in SEQUENCE_TRACKS else None

    def update(self, policy: Policy, rng: np.random.Generator) -> Step:
        raise NotImplementedError

    def lm_update(self, q, qm) -> Step:
        raise NotImplementedError(f"{self.name} has no LM back-end")

    def diffusion_update(self, q, qm) -> Step:
        """One update on the diffusion back-end (``testbed/diffusion``), which offers the LM back-end's interface
        with a denoising trajectory for a response: by default the LM update itself."""
        return self.lm_update(q, qm)

    # ----- declarations ---------------------------------------------------------------------
    @classmethod
    def label(cls, config) -> str:
        """The name its LM rows and curves carry (``metrics.csv``'s ``algorithm``): the method's name."""
        return cls.name

    @classmethod
    def runs_on(cls, config) -> str:
        """The problems this configuration runs on, "reward" or "preference" (default: ``problem_kind``)."""
        return cls.problem_kind

    @staticmethod
    def pairing_hint(kind: str) -> str:
        """What to add to the pairing error when it is given a problem of ``kind`` (e.g. an option that runs it there)."""
        return ""

    @staticmethod
    def needs_reward(config) -> bool:
        """Whether it queries a reward (LM: needs a reward function or model)."""
        return True

    @staticmethod
    def needs_critic(config) -> bool:
        """Whether the LM back-end must build a critic (a value model) for it."""
        return False

    @staticmethod
    def needs_prompts(config) -> bool:
        """Whether each iteration draws a batch of prompts (False: it reads rows of a dataset)."""
        return True

    @staticmethod
    def uses_reference(config) -> bool:
        """Whether it needs pi_ref (a frozen copy or the disabled adapter) during training."""
        return True

    @staticmethod
    def sequences_per_item(config) -> int:
        """Sequences (prompt + response) in one minibatch item: 2 for a pair, 1 for a response or a row."""
        return 1

    @staticmethod
    def items_per_prompt(config) -> int:
        """Minibatch items each prompt of a batch gives (k for k samples scored one by one)."""
        return 1

    @classmethod
    def generated_per_prompt(cls, config) -> int:
        """Sequences its largest LM generate call samples per prompt of the batch (the rollout's KV cache): by
        default one per minibatch item of that prompt; 2 where a pair comes from pi_t in one call."""
        return cls.items_per_prompt(config)

    @staticmethod
    def bound(config) -> str | None:
        """The theory bound its curves are drawn against (experiments/theory.py: "mirror_descent",
        "hedge_regret", "nash_md_kl"), or None."""
        return None

    @staticmethod
    def check_track(config, track: str) -> str | None:
        """None if this configuration runs on ``track``; else what is needed instead."""
        return None

    @staticmethod
    def batchable(config, kind: str) -> bool:
        """Whether ``update`` also takes a stack of S policies of ``kind`` on a
        :class:`~testbed.problems.ProblemBatch` (preference algorithms: a
        :class:`~testbed.problems.PreferenceBatch`) with a list of S generators (one per seed), giving
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
    def draws(config) -> bool:
        """Whether a run of this configuration takes random numbers from its generator (at construction or in an
        update). False: the run is a function of its problem, its configuration and pi_0 alone, so the batched
        runner computes the seeds of a stack that share a problem once (a stack's pi_0 takes no random numbers:
        :func:`~testbed.policies.initial_stack`) and checks afterwards that their generators were never used
        (:func:`~testbed.experiments.runner.generator_used`). Default True (a user rule may draw in any mode)."""
        return True

    @staticmethod
    def counted(config) -> bool:
        """Whether its runs report ``samples``/``queries`` (the counts its Steps and ``initial_*``
        give); False leaves both columns empty. Default: every mode but exact/population."""
        return getattr(config, "mode", "sampled") not in ("exact", "population")

    @staticmethod
    def items_per_iteration(config) -> list[tuple[str, int]]:
        """(field, count) of the items one iteration draws and holds at once (fields declared with
        :func:`items`, times the per-item multipliers declared with ``per_item=True``): the spec refuses a
        count whose arrays (:data:`ITEM_BYTES` each, times the feature dimension) cannot fit in memory."""
        fields = dataclasses.fields(config)
        mult = 1
        for f in fields:
            if f.metadata.get("per_item"):
                mult *= getattr(config, f.name)
        return [(f.name, getattr(config, f.name) * mult) for f in fields
                if f.metadata.get("items") and isinstance(getattr(config, f.name), int)]

    @staticmethod
    def check_problem(config, problem: TabularBandit) -> None:
        """Validate inputs that depend on the problem (e.g. a dataset's indices); raise InputError."""


def mirror_step(log_pi: np.ndarray, eta: float, s: np.ndarray, safe: bool = False) -> np.ndarray:
    """ln pi + eta·s, the logits of pi·exp(eta·s), row by row (the last axis); a row where eta·s overflows takes
    eta·(s − max s) instead, the same distribution in finite numbers (inf − inf in the log-softmax gave NaN at eta
    = 1e308). ``safe`` (:func:`no_overflow`, fixed per problem and eta) skips the per-row test, which costs ~1.5x the
    step itself. Rows that do not overflow get ln pi + eta·s either way: a stack's member gets its unstacked bits."""
    if safe:
        return log_pi + eta * s
    with np.errstate(over="ignore", invalid="ignore"):
        step = eta * s
        over = ~np.all(np.isfinite(step), axis=-1, keepdims=True)
        if over.any():
            step = np.where(over, eta * (s - np.max(s, axis=-1, keepdims=True)), step)
    return log_pi + step


def no_overflow(eta: float, rewards: np.ndarray) -> bool:
    """Whether eta·s cannot overflow in an exact step whose s is the (KL-shaped, centred) reward: eta·max|r| <=
    max float / 16. The centring at most doubles |s|, and the KL term adds at most |ln pi| + |ln pi_ref| to eta·|s|
    (eta·beta <= 1 is validated), finite log-probabilities far below the float range."""
    return bool(eta * float(np.max(np.abs(rewards))) <= np.finfo(float).max / 16)


def per_seed(draw, policy: Policy, rng, problem) -> tuple[np.ndarray, ...]:
    """``draw(policy, rng, problem)`` -> arrays, for one seed; for a stack (``rng`` a list of
    generators, ``problem`` a ProblemBatch) member by member, each from its own generator, stacked.
    Only random draws go through here; the computation on them runs on the whole stack."""
    if not isinstance(rng, list):
        return draw(policy, rng, problem)
    parts = [draw(None if policy is None else member(policy, s), g, problem.members[s]) for s, g in enumerate(rng)]
    return tuple(np.stack(a) for a in zip(*parts))


def check_pairing(cls: type[Algorithm], problem, where: str, config=None) -> None:
    """A preference algorithm (configuration, :meth:`Algorithm.runs_on`) needs a preference problem, a reward
    algorithm a reward problem."""
    kind = "preference" if getattr(problem, "kind", "") == "preference" else "reward"
    wants = cls.problem_kind if config is None else cls.runs_on(config)
    if wants != kind:
        raise InputError(f"{where}: algorithm {cls.name!r} runs on {wants} problems, "
                         f"but problem {problem.name!r} is a {kind} problem" + cls.pairing_hint(kind))


class UnreadField(InputError):
    """Fields given where the configuration never reads them (:func:`build_config`'s ``unread_when`` rule):
    ``messages`` {field: its one-line error}; the error reads as the first."""

    def __init__(self, messages: dict[str, str]):
        super().__init__(next(iter(messages.values())))
        self.messages = messages


def build_config(cls: type, params: dict, where: str, track: str | None = None, check_unread: bool = True):
    """Build and validate a config dataclass from a dict, naming the bad field on error.

    ``track`` ("bandit" or "lm"): fields declared for one track only (metadata ``tracks``) are refused on
    the other, and a field's per-track default (metadata ``lm``: the LM back-end's default, e.g. the
    official REBEL code's beta = 0.05) replaces the dataclass default when the field is not given. A field given
    where the configuration never reads it (metadata ``unread_when``: {other field: its values that leave this one
    unread}, e.g. DPO's ``pairs`` under ``mode: population``; any one of them leaves it unread, and the error names the
    first that does, in that order) is refused with ``track`` given (a spec's entry; a run's
    stored config, every field, is rebuilt without it) and ``check_unread`` (a sweep checks it over its points: a
    field read by one point is not refused at another, :class:`UnreadField`); its default never is."""
    fields = {f.name for f in dataclasses.fields(cls)}
    given = set(params)
    seq = track in SEQUENCE_TRACKS
    unknown = sorted(set(params) - fields)
    if unknown:
        raise InputError(f"{where}: unknown parameter(s) {unknown}; expected some of {sorted(fields)}")
    params = dict(params)
    for f in dataclasses.fields(cls):
        only = f.metadata.get("tracks")
        if track and only and track not in only and not (track == "diffusion" and "lm" in only) and f.name in params:
            raise InputError(f"{where}.{f.name} applies to {' and '.join(only)} runs only, not to {track} runs")
        if track in f.metadata.get("not_on", ()) and f.name in params:
            raise InputError(f"{where}.{f.name} does not apply to {track} runs (their update never reads it): remove it")
        if seq and f.name not in params and (track in f.metadata or "lm" in f.metadata):
            params[f.name] = f.metadata.get(track, f.metadata.get("lm"))
    cfg = cls(**params)
    unread: dict[str, str] = {}  # each field's first deciding field (in its unread_when's order) that leaves it unread
    for f in dataclasses.fields(cls):
        for other, values in f.metadata.get("unread_when", {}).items():
            if track and check_unread and f.name in given and getattr(cfg, other) in values:
                unread.setdefault(f.name, f"{where}.{f.name} is not read with {other}: {getattr(cfg, other)} (remove it)")
    if unread:
        raise UnreadField(unread)
    for f in dataclasses.fields(cls):
        v = getattr(cfg, f.name)
        meta = f.metadata
        field = f"{where}.{f.name}"
        check = meta.get("lm_check", meta.get("check")) if seq else meta.get("check")
        if "choices" in meta:
            choice(field, v, meta["choices"])
        elif check == "positive":
            setattr(cfg, f.name, positive_number(field, v))
        elif check == "nonneg":
            setattr(cfg, f.name, nonneg_number(field, v))
        elif check == "positive_int":
            positive_int(field, v)
        elif check == "nonneg_int":
            nonneg_int(field, v)
        elif check == "bool" and not isinstance(v, bool):
            raise InputError(f"{field} must be true or false (got {v!r})")
        elif check == "unit_open":
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < 1:
                raise InputError(f"{field} must be a number in (0, 1) (got {v!r})")
            setattr(cfg, f.name, float(v))
        elif check == "path":
            if not isinstance(v, str):
                raise InputError(f"{field} must be a file path (got {v!r})")
            if v and not Path(v).is_file():
                raise InputError(f"{field}: file {v!r} does not exist")
    if hasattr(cfg, "validate"):
        cfg.validate(where)
    return cfg


_UNSET = object()


def _field(default, meta: dict, lm=_UNSET, tracks: tuple[str, ...] | None = None, lm_check: str | None = None,
           diffusion=_UNSET, not_on: tuple[str, ...] = (), unread_when: dict | None = None):
    """A config field; ``lm``: its default on the LM back-end (``lm_check``: its check there, e.g. 0 allowed);
    ``diffusion``: its default on the diffusion back-end (else the LM one); ``tracks``: the back-ends it applies to;
    ``not_on``: back-ends that refuse it when given (e.g. an LM field the diffusion update does not read, which the
    diffusion back-end would otherwise take with the LM's fields); ``unread_when``: {another field: the values of it
    under which the update never reads this one}, refused when given there (e.g. {"mode": ("exact",)})."""
    if not_on:
        meta["not_on"] = not_on
    if unread_when:
        meta["unread_when"] = unread_when
    if lm is not _UNSET:
        meta["lm"] = lm
    if diffusion is not _UNSET:
        meta["diffusion"] = diffusion
    if lm_check:
        meta["lm_check"] = lm_check
    if tracks:
        meta["tracks"] = tracks
    return dataclasses.field(default=default, metadata=meta)


def positive(default, doc: str, **kw):
    return _field(default, {"check": "positive", "doc": doc}, **kw)


def nonneg(default, doc: str, **kw):
    return _field(default, {"check": "nonneg", "doc": doc}, **kw)


def count(default, doc: str, **kw):
    return _field(default, {"check": "positive_int", "doc": doc}, **kw)


ITEM_BYTES = 64
"""Bytes one drawn item (a response or a pair) holds per feature dimension in a sampled step — indices,
log-probabilities, rewards, the regression's rows — a lower estimate (8 float64 values)."""


def items(default, doc: str, per_item: bool = False, **kw):
    """A count of items drawn per iteration (``per_item``: a multiplier of each item, e.g. opponents per
    response): :meth:`Algorithm.items_per_iteration` checks their memory up front."""
    return _field(default, {"check": "positive_int", "doc": doc, "per_item" if per_item else "items": True}, **kw)


def nonneg_count(default, doc: str, **kw):
    return _field(default, {"check": "nonneg_int", "doc": doc}, **kw)


def one_of(default, choices: tuple[str, ...], doc: str, **kw):
    return _field(default, {"choices": choices, "doc": doc}, **kw)


def flag(default: bool, doc: str, **kw):
    return _field(default, {"check": "bool", "doc": doc}, **kw)


def unit_open(default: float, doc: str, **kw):
    return _field(default, {"check": "unit_open", "doc": doc}, **kw)


def path(doc: str, **kw):
    """A file path ('' = none); relative paths in a spec are taken relative to the spec file."""
    return _field("", {"check": "path", "doc": doc}, **kw)


LM = ("lm",)
BANDIT = ("bandit",)
DIFFUSION = ("diffusion",)


def minibatch_field(default: int, doc: str, **kw):
    """Items per optimiser step; on the LM back-end 0 (its default) means ``train.minibatch``."""
    return count(default, doc + "; LM: 0 = train.minibatch (items as in train.minibatch)", lm=0, lm_check="nonneg_int",
                 **kw)


def grad_accum_field(**kw):
    """LM: micro-batches per minibatch for this algorithm (0: train.grad_accum), overriding the train block's."""
    return nonneg_count(0, "LM: micro-batches per minibatch (0: train.grad_accum): the same optimiser steps on fewer "
                           "sequences per backward pass", tracks=LM, **kw)


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
    if isinstance(a, np.ndarray):  # fancy indexing: the entries of take_along_axis, without its checks
        if a.ndim > 2:
            raise ValueError(f"take: a must be [N] or [S, N] (got shape {a.shape})")
        return np.take(a, idx) if a.ndim == 1 else np.take(a, np.arange(len(a))[:, None] * a.shape[1] + idx)
    return torch.gather(a, -1, torch.as_tensor(idx))  # gather: indices are in range (no take_along_dim remainder)
