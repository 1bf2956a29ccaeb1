"""A conformance suite for anyone's policy-optimisation update rule: ``testbed check MODULE:OBJECT``.

The interface (duck-typed; see ``examples`` at the bottom and the README):

    class MyRule:
        family = "mirror_descent"   # which battery applies: mirror_descent | equilibrium | dpo | sampled
        eta = 1.0                   # the step size the rule claims (mirror_descent bound checks)
        beta = 0.5                  # dpo only: the KL strength it claims
        def update(self, api: BanditAPI, logits: np.ndarray, rng: np.random.Generator) -> np.ndarray:
            ...                     # return the new logits [X, Y] of a tabular softmax policy

``OBJECT`` is a class (called with no arguments), a zero-argument factory, or an instance (deep-copied);
one fresh rule is made per instance and seed, so a rule may keep state between updates. The
:class:`BanditAPI` is the problem's batch interface: sizes, rho and pi_ref; exact tables for
population methods (``reward_table``, ``preference_table``); sampled oracles (``sample_contexts``,
``rewards``, ``preferences``) that count their queries.

The batteries encode testbed/THEORY.md:
- ``mirror_descent`` (exact, reward problems; pi_0 uniform, rewards in [0, 1]): monotone improvement,
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

import copy
import importlib
import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from scipy.special import log_softmax, softmax

from testbed.errors import InputError
from testbed.problems import PreferenceBandit, TabularBandit, make_preference, make_tabular
from testbed.training import train

FAMILIES = ("mirror_descent", "equilibrium", "dpo", "sampled")


class BudgetExceeded(RuntimeError):
    pass


class BanditAPI:
    """What an update rule may see of a problem: sizes, rho, pi_ref, exact tables, sampled oracles."""

    def __init__(self, problem: TabularBandit | PreferenceBandit, rng: np.random.Generator,
                 preferences: np.ndarray | None = None, budget: int | None = None):
        self._p, self._rng, self._budget = problem, rng, budget
        self._P = problem.preferences if isinstance(problem, PreferenceBandit) else preferences
        self.num_contexts, self.num_actions = problem.num_contexts, problem.num_actions
        self.rho, self.pi_ref = problem.rho.copy(), problem.pi_ref.copy()
        self.queries = 0

    def reward_table(self) -> np.ndarray:
        if isinstance(self._p, PreferenceBandit):
            raise RuntimeError("a preference problem has no reward table")
        return self._p.rewards.copy()

    def preference_table(self) -> np.ndarray:
        if self._P is None:
            raise RuntimeError("this problem offers no preference table")
        return self._P.copy()

    def sample_contexts(self, n: int) -> np.ndarray:
        return self._p.sample_contexts(self._rng, n)

    def _count(self, n: int) -> None:
        self.queries += n
        if self._budget is not None and self.queries > self._budget:
            raise BudgetExceeded(f"more than {self._budget} oracle queries in one update")

    def rewards(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        self._count(len(x))
        return self._p.sample_rewards(self._rng, x, y)

    def preferences(self, x: np.ndarray, y: np.ndarray, y2: np.ndarray) -> np.ndarray:
        """1 where y ≻ y' was observed, else 0 (one Bernoulli(P(y ≻ y'|x)) draw per pair)."""
        self._count(len(x))
        return (self._rng.random(len(x)) < self.preference_table()[x, y, y2]).astype(float)


@dataclass
class Result:
    check: str
    instance: str
    measured: float
    threshold: str
    passed: bool


def load_rule(target: str):
    """MODULE:OBJECT (a dotted module, or a path to a .py file), or builtin:NAME → a factory of rules."""
    if target.startswith("builtin:"):
        name = target.removeprefix("builtin:")
        if name not in BUILTINS:
            raise InputError(f"check target: unknown built-in {name!r}; known: {', '.join(BUILTINS)}")
        return BUILTINS[name]
    if target.count(":") != 1:
        raise InputError(f"check target must look like MODULE:OBJECT or path/to/file.py:OBJECT (got {target!r})")
    mod_name, obj_name = target.split(":")
    try:
        if mod_name.endswith(".py"):
            path = Path(mod_name)
            if not path.is_file():
                raise InputError(f"check target: file {mod_name!r} does not exist")
            spec = importlib.util.spec_from_file_location(path.stem, path)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
        else:
            sys.path.insert(0, str(Path.cwd()))
            module = importlib.import_module(mod_name)
    except InputError:
        raise
    except Exception as e:
        raise InputError(f"check target: cannot import {mod_name!r} ({type(e).__name__}: {e})") from None
    if not hasattr(module, obj_name):
        raise InputError(f"check target: {mod_name!r} has no object {obj_name!r}")
    obj = getattr(module, obj_name)
    is_factory = isinstance(obj, type) or (callable(obj) and not hasattr(obj, "update"))
    factory = obj if is_factory else (lambda: copy.deepcopy(obj))
    rule = factory()
    if not callable(getattr(rule, "update", None)):
        raise InputError(f"check target {target!r}: the rule needs a method update(api, logits, rng)")
    if getattr(rule, "family", None) not in FAMILIES:
        raise InputError(f"check target {target!r}: family must be one of {', '.join(FAMILIES)} "
                         f"(got {getattr(rule, 'family', None)!r})")
    return factory


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
    eta = float(factory().eta)
    out = []
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


def run_checks(factory) -> list[Result]:
    family = factory().family
    try:
        return BATTERIES[family](factory)
    except BudgetExceeded as e:
        return [Result(f"query budget: {e}", "tabular-random-20x10-s0", float("nan"), "<= 500 per update", False)]
    except (FloatingPointError, ValueError, RuntimeError) as e:
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

    def __init__(self, name: str, family: str, **params):
        self.name, self.family, self.params = name, family, params
        self.eta, self.beta = params.get("eta", 1.0), params.get("beta", 0.0)
        self._algo = None

    def update(self, api: BanditAPI, logits: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        from testbed.algorithms import ALGORITHMS, build_config
        from testbed.policies import TabularSoftmax

        if self._algo is None:
            cls = ALGORITHMS[self.name]
            self._algo = cls(build_config(cls.Config, self.params, self.name), _problem_view(api), rng)
        return self._algo.update(TabularSoftmax(logits), rng).policy.params


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
    "rebel": lambda: _Builtin("rebel", "mirror_descent", eta=1.0),
    "npg": lambda: _Builtin("npg", "mirror_descent", eta=1.0),
    "hedge": lambda: _Builtin("hedge", "equilibrium", eta=0.1),
    "rebel_pref": lambda: _Builtin("rebel_pref", "equilibrium", eta=0.1),
    "optimistic_hedge": lambda: _Builtin("optimistic_hedge", "equilibrium", eta=0.1),
    "dpo": _dpo_view(0.5),
    "rebel-sampled": lambda: _Builtin("rebel", "sampled", eta=1.0, mode="sampled", pairs=250),
    "npg-sampled": lambda: _Builtin("npg", "sampled", eta=1.0, mode="sampled", samples=500),
    "ppo": lambda: _Builtin("ppo", "sampled", batch=500, lr=0.05),
}
