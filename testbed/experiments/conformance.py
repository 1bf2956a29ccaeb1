"""A conformance suite for anyone's policy-optimisation update rule: ``testbed check MODULE:OBJECT``.

The interface (duck-typed; see ``examples`` at the bottom and the README):

    class MyRule:
        family = "mirror_descent"   # which battery applies: mirror_descent | equilibrium | dpo | sampled
        eta = 1.0                   # the step size the rule claims (mirror_descent: the harness sets it)
        beta = 0.5                  # dpo: the KL strength it claims; mirror_descent: optional, set too
        kinds = ("tabular",)        # the policies it updates (mirror_descent: also "loglinear", "mlp")
        def update(self, api: BanditAPI, params: np.ndarray, rng: np.random.Generator) -> np.ndarray:
            ...                     # return the new parameters (tabular: the logits [X, Y])

``OBJECT`` is a class (called with no arguments), a zero-argument factory, or an instance (deep-copied);
one fresh rule is made per instance and seed, so a rule may keep state between updates. The
:class:`BanditAPI` is the problem's batch interface: sizes, rho and pi_ref; exact tables for
population methods (``reward_table``, ``preference_table``); the policy's ``log_probs(params)`` as a torch
function; sampled oracles (``sample_contexts``, ``sample``, ``rewards``, ``preferences``) that count their
queries (:mod:`testbed.algorithms.user`, the same plug-in point as a spec's ``{module: ...}`` entry).

The batteries encode testbed/THEORY.md:
- ``mirror_descent`` (exact, reward problems): first the step itself, exactly, at several eta (and beta)
  on tabular, log-linear and MLP policies (:mod:`testbed.experiments.conformance_exact`); then, from pi_0
  uniform with rewards in [0, 1] (beta set to 0 where the rule has one): monotone improvement,
  the bound J* - J(pi_T) <= log|Y|/(eta·T) + 1/T for every T <= 200 (Agarwal et al. 2021, Thm 16),
  and invariance of the update to a per-context constant added to the rewards.
- ``equilibrium`` (exact preference games): the minimax winner is a fixed point, and the average
  iterate's exploitability falls below 0.02 within T = 2000 on rock-paper-scissors, the intransitive
  dice, the NLHF example (eps = 0.2) and a Bradley–Terry game (a Condorcet winner exists; on the
  3-action cyclic games the winner is the null vector of P - ½, the same for P and Pᵀ, so only a
  transitive game separates ascending the win rate from descending it).
- ``dpo`` (exact preferences from Bradley–Terry on the reward, full coverage): reaches pi*_beta (max
  probability error <= 1e-3 within 100 updates), and pi_ref is a fixed point when every preference is ½.
- ``sampled`` (only the sampled reward oracle, 500 queries per update): sub-optimality below 0.05 after
  100 updates on the default tabular problem on at least 8 of 10 seeds, within the query budget.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
from scipy.special import log_softmax, softmax

from testbed.algorithms.user import (
    FAMILIES,
    METHODS,
    BanditAPI,
    BudgetExceeded,
    load_factory,
    missing_method,
    rule_kinds,
    user_code,
)
from testbed.errors import InputError
from testbed.experiments.conformance_exact import check_steps, fresh, one_thread
from testbed.problems import PreferenceBandit, TabularBandit, make_preference, make_tabular
from testbed.training import train


def load_rule(target: str):
    """MODULE:OBJECT (a dotted module, or a path to a .py file), or builtin:NAME → a factory of rules."""
    if target.startswith("builtin:"):
        name = target.removeprefix("builtin:")
        if name not in BUILTINS:
            raise InputError(f"check target: unknown built-in {name!r}; known: {', '.join(BUILTINS)}")
        return BUILTINS[name]
    factory = load_factory(target, "check target", FAMILIES)
    rule = factory()
    for kind in rule_kinds(rule):
        missing = missing_method(rule, kind)
        if missing:
            raise InputError(f"check target {target!r}: its kinds include {kind!r}, which needs a method {missing}")
    if rule.family != "mirror_descent" and missing_method(rule, "tabular"):
        raise InputError(f"check target {target!r}: the {rule.family} battery runs the rule's "
                         f"{METHODS['update']} (only mirror_descent has LM rows)")
    return factory


@dataclass
class Result:
    check: str
    instance: str
    measured: float
    threshold: str
    passed: bool


def _run(factory, api: BanditAPI, logits: np.ndarray, T: int, rng: np.random.Generator, callback=None):
    """T updates of a fresh rule through the one training loop; ``callback(t, logits)`` after each."""
    rule = factory()
    st = SimpleNamespace(t=0, logits=logits)

    def step(t: int) -> None:
        st.logits = log_softmax(np.asarray(rule.update(api, st.logits, rng), dtype=np.float64), axis=1)
        if not np.all(np.isfinite(st.logits)):
            raise FloatingPointError(f"update {t} returned non-finite logits")

    def record(t: int) -> None:
        if callback and t:
            callback(t, st.logits)

    train(st, T, step, record)
    return st.logits


def check_mirror_descent(factory) -> list[Result]:
    out = check_steps(factory, Result)
    if "tabular" not in rule_kinds(factory()):
        return out  # an LM-only rule: the bounds below are about its tabular update
    if hasattr(factory(), "beta"):  # the bound and monotonicity are about J: the unregularised rule
        factory = (lambda f: lambda: fresh(f, beta=0.0))(factory)
    eta = float(factory().eta)
    for fam in ("random", "needle", "gap"):
        for seed in (0, 1):
            p = make_tabular(fam, contexts=8, actions=6, seed=seed)
            name = f"{fam}-8x6-s{seed}"
            api = BanditAPI(p, np.random.default_rng(seed))
            J, gaps = [p.value(np.full((8, 6), 1 / 6))], []

            def record(t, logits, p=p, J=J, gaps=gaps):
                J.append(p.value(softmax(logits, axis=1)))
                gaps.append(p.optimal_value() - J[-1])

            _run(factory, api, np.zeros((8, 6)), 200, np.random.default_rng(seed), record)
            worst = float(np.min(np.diff(J)))
            out.append(Result("monotone improvement: min_t J(pi_t+1) - J(pi_t)", name, worst, ">= -1e-12",
                              worst >= -1e-12))
            T = np.arange(1, 201)
            ratio = float(np.max(np.array(gaps) / (np.log(6) / (eta * T) + 1 / T)))
            out.append(Result("bound: max_T gap / (log|Y|/(eta T) + 1/T)", name, ratio, "<= 1", ratio <= 1))
    p = make_tabular("random", contexts=5, actions=4, seed=7)
    shift = TabularBandit(p.rewards + np.random.default_rng(0).normal(size=(5, 1)) * 3, p.rho, p.pi_ref)
    start = np.random.default_rng(1).normal(size=(5, 4))
    a = _run(factory, BanditAPI(p, np.random.default_rng(0)), start, 1, np.random.default_rng(0))
    b = _run(factory, BanditAPI(shift, np.random.default_rng(0)), start, 1, np.random.default_rng(0))
    diff = float(np.max(np.abs(softmax(a, axis=1) - softmax(b, axis=1))))
    out.append(Result("invariance: r -> r + c(x) changes pi_t+1 by", "random-5x4-s7", diff, "<= 1e-9", diff <= 1e-9))
    return out


EQUILIBRIUM_GAMES = (("rps", {}), ("dice", {}), ("nlhf", {"eps": 0.2}), ("bt", {"actions": 5, "seed": 0}))


def check_equilibrium(factory) -> list[Result]:
    out = []
    for fam, kw in EQUILIBRIUM_GAMES:
        p = make_preference(fam, **kw)
        winner = p.minimax_winner()
        if np.all(winner > 0):  # a softmax policy can sit exactly on a full-support winner
            fixed = _run(factory, BanditAPI(p, np.random.default_rng(0)), np.log(winner), 1, np.random.default_rng(0))
            moved = float(np.max(np.abs(softmax(fixed, axis=1) - winner)))
            out.append(Result("fixed point: the minimax winner moves by", fam, moved, "<= 1e-6", moved <= 1e-6))
        start = np.log(np.linspace(2.0, 1.0, p.num_actions) / np.linspace(2.0, 1.0, p.num_actions).sum())[None, :]
        total = np.zeros_like(start)

        def accumulate(t, logits, total=total):
            total += softmax(logits, axis=1)

        total += softmax(start, axis=1)  # pi_0 ... pi_{T-1}
        last = _run(factory, BanditAPI(p, np.random.default_rng(0)), start, 2000, np.random.default_rng(0), accumulate)
        avg = (total - softmax(last, axis=1)) / 2000
        expl = float(p.exploitability(avg))
        out.append(Result("average iterate: exploitability after T = 2000", fam, expl, "<= 0.02", expl <= 0.02))
    return out


def check_dpo(factory) -> list[Result]:
    from scipy.special import expit

    beta = float(factory().beta)
    rng = np.random.default_rng(3)
    p = TabularBandit(rng.random((4, 5)), pi_ref=rng.dirichlet(np.ones(5) * 3, size=4))
    P = expit(p.rewards[:, :, None] - p.rewards[:, None, :])
    final = _run(factory, BanditAPI(p, rng, preferences=P), p.log_pi_ref, 100, rng)
    err = float(np.max(np.abs(softmax(final, axis=1) - p.regularised_optimum(beta))))
    out = [Result(f"reaches pi*_beta (beta = {beta:g}): max |pi - pi*|", "bt-4x5", err, "<= 1e-3", err <= 1e-3)]
    ties = _run(factory, BanditAPI(p, rng, preferences=np.full((4, 5, 5), 0.5)), p.log_pi_ref, 20, rng)
    moved = float(np.max(np.abs(softmax(ties, axis=1) - p.pi_ref)))
    out.append(Result("all preferences ½: pi_ref moves by", "ties-4x5", moved, "<= 1e-9", moved <= 1e-9))
    return out


def check_sampled(factory) -> list[Result]:
    p = make_tabular()
    gaps = []
    for seed in range(10):
        rng = np.random.default_rng(seed)
        api = BanditAPI(p, rng)
        logits = np.zeros((p.num_contexts, p.num_actions))
        rule = factory()
        for _ in range(100):
            api.queries = 0
            api._budget = 500
            logits = log_softmax(np.asarray(rule.update(api, logits, rng), dtype=np.float64), axis=1)
        gaps.append(p.optimal_value() - p.value(softmax(logits, axis=1)))
    passed = int(np.sum(np.array(gaps) < 0.05))
    return [Result("sub-optimality < 0.05 after 100 x 500 queries: seeds passing", "tabular-random-20x10-s0",
                   passed, ">= 8 of 10", passed >= 8)]


BATTERIES = {"mirror_descent": check_mirror_descent, "equilibrium": check_equilibrium, "dpo": check_dpo,
             "sampled": check_sampled}


def run_checks(factory, target: str = "the rule") -> list[Result]:
    """The battery of the rule's family, on one torch thread (:func:`~testbed.experiments.conformance_exact.one_thread`);
    a SystemExit the rule raises is an input error naming ``target``."""
    with one_thread(), user_code(f"check target {target!r}: the rule"):
        return _run_battery(factory)


def _run_battery(factory) -> list[Result]:
    family = factory().family
    try:
        return BATTERIES[family](factory)
    except BudgetExceeded as e:
        return [Result(f"query budget: {e}", "tabular-random-20x10-s0", float("nan"), "<= 500 per update", False)]
    except Exception as e:  # the rule's own code failed: a failed check, named, not an internal error
        return [Result(f"the rule raised {type(e).__name__}: {e}", "-", float("nan"), "no error", False)]


def format_table(target: str, results: list[Result]) -> str:
    w = max(len(r.check) for r in results)
    lines = [f"conformance: {target}", f"  {'check':<{w}}  {'instance':<24} {'measured':>12}  {'threshold':<12} result"]
    for r in results:
        lines.append(f"  {r.check:<{w}}  {r.instance:<24} {r.measured:>12.4g}  {r.threshold:<12} "
                     f"{'PASS' if r.passed else 'FAIL'}")
    n = sum(r.passed for r in results)
    lines.append(f"{n}/{len(results)} checks passed: {'PASS' if n == len(results) else 'FAIL'}")
    return "\n".join(lines)


# ----- the built-in algorithms, through the same interface ------------------------------------------
class _Builtin:
    """Wrap a testbed algorithm as a conformance rule (tabular softmax policy)."""

    def __init__(self, name: str, family: str, kinds: tuple[str, ...] = ("tabular",), **params):
        self.name, self.family, self.params, self.kinds = name, family, params, kinds
        self._algo = None

    eta = property(lambda self: self.params.get("eta", 1.0), lambda self, v: self.params.__setitem__("eta", v))
    beta = property(lambda self: self.params.get("beta", 0.0), lambda self, v: self.params.__setitem__("beta", v))

    def update(self, api: BanditAPI, logits: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        from testbed.algorithms import ALGORITHMS, build_config

        if self._algo is None:
            cls = ALGORITHMS[self.name]
            view = _problem_view(api) if api.kind == "tabular" else api._p
            self._algo = cls(build_config(cls.Config, self.params, self.name), view, rng)
        return self._algo.update(api.policy.with_params(logits), rng).policy.params


def _problem_view(api: BanditAPI):
    """A problem object whose exact tables and sampled oracles are the API's."""
    if isinstance(api._p, PreferenceBandit):
        return api._p

    class View(TabularBandit):
        def sample_contexts(self, rng, n):
            return api.sample_contexts(n)

        def sample_rewards(self, rng, x, y):
            return api.rewards(x, y)

    return View(api._p.rewards, api.rho, api.pi_ref, api._p.noise_std, api._p.name)


def _dpo_view(beta: float):
    class DPORule:
        family = "dpo"

        def __init__(self):
            self.beta, self._algo = beta, None

        def update(self, api, logits, rng):
            from testbed.algorithms import DPO, build_config
            from testbed.datasets import PreferenceOracle
            from testbed.policies import TabularSoftmax

            if self._algo is None:
                problem = TabularBandit(api._p.rewards, api.rho, api.pi_ref)
                self._algo = DPO(build_config(DPO.Config, {"mode": "population", "beta": beta, "mu": "uniform"}, "dpo"),
                                 problem, rng)
                # the oracle is the API's preference table (BT here, or ties)
                oracle = PreferenceOracle(problem, "tensor", preferences=api.preference_table())
                x, y, y2 = self._algo.data.prompt, self._algo.data.chosen, self._algo.data.rejected
                w = problem.rho[x] * self._algo.mu[x, y] * self._algo.mu[x, y2] * oracle.prob(x, y, y2)
                import torch

                self._algo.weight = torch.as_tensor(w)
            return self._algo.update(TabularSoftmax(logits), rng).policy.params

    return DPORule


BUILTINS = {
    "rebel": lambda: _Builtin("rebel", "mirror_descent", ("tabular", "loglinear"), eta=1.0),
    "npg": lambda: _Builtin("npg", "mirror_descent", ("tabular", "loglinear"), eta=1.0),
    "hedge": lambda: _Builtin("hedge", "equilibrium", eta=0.1),
    "rebel_pref": lambda: _Builtin("rebel_pref", "equilibrium", eta=0.1),
    "optimistic_hedge": lambda: _Builtin("optimistic_hedge", "equilibrium", eta=0.1),
    "dpo": _dpo_view(0.5),
    "rebel-sampled": lambda: _Builtin("rebel", "sampled", eta=1.0, mode="sampled", pairs=250),
    "npg-sampled": lambda: _Builtin("npg", "sampled", eta=1.0, mode="sampled", samples=500),
    "ppo": lambda: _Builtin("ppo", "sampled", batch=500, lr=0.05),
}
