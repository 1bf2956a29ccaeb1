"""The exact part of the ``mirror_descent`` battery: checks that pin the step a rule claims.

A rule that states ``eta`` (and, if it has the attribute, ``beta``) is set to several values and updates
1-3 of one rule instance, from a random policy, are each compared with the exact update from that update's own
starting policy at those values (testbed/THEORY.md §C), so state that changes the step after the first call fails
(the MLP and LM checks: the first update only):

- ``tabular``: mirror descent, ln pi_t+1 = (1 - eta·beta)·ln pi_t + eta·beta·ln pi_ref + eta·r + c(x),
  to 1e-8 in log-probabilities, at the claimed eta and at 0.3 and 3 (and beta = 0.2 when the rule has a
  ``beta``). This catches a forgotten 1/eta, eta², a doubled step, y' = y, the anchor pi_ref instead of
  pi_t, a sign flip, a missing stop-gradient on pi_t, a dropped KL term.
- ``loglinear`` (rules whose ``kinds`` include it): NPG, theta + eta·F⁺∇J (exact REBEL with y' ~ pi_t
  is the same step), on a misspecified linear bandit with non-uniform rho, where y' ~ uniform and an
  unweighted mean over contexts give other steps.
- ``lm`` (rules whose ``kinds`` include it, with an ``lm_update``): the rule's LM update on a one-token
  and a two-token toy LM is the mirror-descent step on the responses it saw
  (:mod:`testbed.llm.conformance`, registered in :data:`STEP_BATTERIES` when the llm extra is there).
- ``mlp`` (rules whose ``kinds`` include it): the step linearised at theta_t — the change of ln pi
  to first order, ∇_theta f·(theta_t+1 - theta_t) — is NPG's on the tangent features ∇_theta f(x, y)
  (exact REBEL on the linearised policy; a Gauss-Newton step), to 1e-8 relative; y' ~ uniform and the
  unweighted context mean differ there too (the tangent features do not fit the reward).

Each failure names the property, the setting and the measured numbers: the error, and the step
ratio <Δ ln pi, Δ_exact>/|Δ_exact|² on centred log-probabilities (1 for a correct step, 2 for a doubled
one, 0 for no move, −1 for a sign flip).
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch
from scipy.special import log_softmax

from testbed.algorithms.user import BanditAPI, rule_kinds
from testbed.errors import env_threads
from testbed.policies import LogLinear, MLPPolicy
from testbed.policies.natural import natural_step
from testbed.problems import LinearBandit, TabularBandit, make_linear, make_tabular

STEP_BATTERIES: dict = {}
"""Step checks of the back-ends above the core, by policy kind (``"lm"``: :mod:`testbed.llm.conformance`, which
registers itself when imported)."""
STEP_ETAS = (0.3, 3.0)
STEP_TOL = 1e-8
UPDATES = 3
"""The step checks compare updates 1..UPDATES of one rule instance, each from its own starting policy."""


def fresh(factory, **attrs):
    rule = factory()
    for k, v in attrs.items():
        setattr(rule, k, v)
    return rule


def settings(rule) -> list[tuple[float, float]]:
    """(eta, beta) pairs: the claimed ones, then other etas, then a KL strength if the rule takes one."""
    eta, beta = float(rule.eta), float(getattr(rule, "beta", 0.0) or 0.0)
    out = [(eta, beta)] + [(e, beta) for e in STEP_ETAS if e != eta and e * beta <= 1]
    if hasattr(rule, "beta") and beta != 0.2:
        out.append((1.0, 0.2))
    return out


def _centred(a: np.ndarray) -> np.ndarray:
    return a - a.mean(axis=-1, keepdims=True)


def _compare(new_log, old_log, want_log) -> tuple[float, float]:
    """(max |ln pi_new - ln pi_want|, step ratio) on per-context centred log-probabilities."""
    err = float(np.max(np.abs(_centred(new_log) - _centred(want_log))))
    d, t = _centred(new_log - old_log), _centred(want_log - old_log)
    ratio = float(np.sum(d * t) / np.sum(t * t)) if np.sum(t * t) > 0 else float("nan")
    return err, ratio


def step_attrs(rule, eta, beta) -> dict:
    return {"eta": eta, **({"beta": beta} if hasattr(rule, "beta") else {})}


def _worst_of_updates(update, exact, start, updates: int = UPDATES) -> tuple[float, float, int, int]:
    """Updates 1..``updates`` of one rule instance from ``start`` (``update(params) -> new params``), each
    compared by ``exact(params, new) -> (error, step ratio)`` with the exact step from that update's own starting
    policy, so a rule whose state changes its step after the first call fails. (error, ratio, update) of the worst,
    and ``updates``."""
    worst, params = (-1.0, float("nan"), 0), start
    for k in range(1, updates + 1):
        new = update(params)
        err, ratio = exact(params, new)
        if not err <= worst[0]:  # NaN: the worst
            worst = (err, ratio, k)
        if not np.all(np.isfinite(new)) or np.isnan(err):
            break
        params = new
    return (*worst, updates)


def _step_result(Result, what: str, eta, beta, measure: str, worst, instance: str):
    err, ratio, k, n = worst
    which = f"max over updates 1-{n} of {measure} (update {k}: " if n > 1 else f"{measure} ("
    return Result(f"{what} at eta = {eta:g}, beta = {beta:g}: {which}step ratio {ratio:.6g})", instance, err,
                  f"<= {STEP_TOL:g}", err <= STEP_TOL)


def check_step_tabular(factory, Result) -> list:
    out = []
    rule = factory()
    for seed, (eta, beta) in enumerate(settings(rule)):
        g = np.random.default_rng(100 + seed)
        base = make_tabular("random", contexts=6, actions=5, seed=11 + seed)
        p = TabularBandit(base.rewards, base.rho, g.dirichlet(np.ones(5) * 2, size=6))
        r, api = fresh(factory, **step_attrs(rule, eta, beta)), BanditAPI(p, g)

        def update(logits, r=r, api=api, g=g):
            return log_softmax(np.asarray(r.update(api, logits.copy(), g), dtype=np.float64), axis=1)

        def exact(logits, new, p=p, eta=eta, beta=beta):
            want = log_softmax((1 - eta * beta) * logits + eta * beta * p.log_pi_ref + eta * p.rewards, axis=1)
            return _compare(new, logits, want)

        worst = _worst_of_updates(update, exact, log_softmax(g.normal(size=(6, 5)), axis=1))
        out.append(_step_result(Result, "step: mirror descent", eta, beta, "|ln pi - ln pi_md|", worst,
                                f"random-6x5-s{11 + seed}"))
    return out


def loglinear_problem(seed: int = 5) -> LinearBandit:
    """A misspecified linear bandit with non-uniform rho and pi_ref: y' ~ pi_t and y' ~ uniform differ."""
    g = np.random.default_rng(seed)
    base = make_linear("random", contexts=6, actions=5, dim=3, seed=seed, misspecification=0.6)
    return LinearBandit(base.features, base.theta_star, base.rewards, rho=g.dirichlet(np.ones(6)),
                        pi_ref=g.dirichlet(np.ones(5) * 2, size=6), name=f"linear-mis-6x5x3-s{seed}")


def check_step_loglinear(factory, Result) -> list:
    out = []
    rule = factory()
    p = loglinear_problem()
    for seed, (eta, beta) in enumerate(settings(rule)):
        g = np.random.default_rng(200 + seed)
        pol = LogLinear(p.features, g.normal(size=3))
        r, api = fresh(factory, **step_attrs(rule, eta, beta)), BanditAPI(p, g, policy=pol)

        def update(theta, r=r, api=api, g=g):
            return np.asarray(r.update(api, theta.copy(), g), dtype=np.float64)

        def exact(theta, new, pol=pol, eta=eta, beta=beta):
            old = pol.with_params(theta).log_probs()
            q = p.rewards - beta * (old - p.log_pi_ref)
            want = pol.with_params(theta + natural_step(p.rho, p.features, q, np.exp(old), None, eta)).log_probs()
            return _compare(pol.with_params(new).log_probs(), old, want)

        worst = _worst_of_updates(update, exact, pol.params.copy())
        out.append(_step_result(Result, "log-linear step: NPG theta + eta·F⁺∇J", eta, beta, "|ln pi - ln pi_npg|",
                                worst, p.name))
    return out


def mlp_problem(seed: int = 7) -> tuple[LinearBandit, MLPPolicy]:
    g = np.random.default_rng(seed)
    base = make_linear("random", contexts=16, actions=5, dim=4, seed=seed, misspecification=0.6)
    p = LinearBandit(base.features, base.theta_star, base.rewards, rho=g.dirichlet(np.ones(16)),
                     pi_ref=g.dirichlet(np.ones(5) * 2, size=16), name=f"linear-mis-16x5x4-s{seed}")
    pol = MLPPolicy(p.features, (4,), rng=g)
    params = pol.params.copy()
    params[-5:] = g.normal(size=5)  # a non-uniform pi_t with non-zero gradients in every layer
    return p, pol.with_params(params)


def _tangent(pol: MLPPolicy) -> np.ndarray:
    """∇_theta f_theta(x, y) [X, Y, P] at the policy's parameters."""
    theta = torch.tensor(pol.params, requires_grad=True)
    f = pol._logits(theta, pol._torch_features()).reshape(-1)  # f_theta(x, y)
    tangent = torch.stack([torch.autograd.grad(v, theta, retain_graph=True)[0] for v in f]).numpy()
    return tangent.reshape(*np.shape(pol.features)[:2], -1)


def check_step_mlp(factory, Result) -> list:
    """Linearised at theta_t, the step is NPG on the tangent features ∇_theta f(x, y): the change of ln pi
    to first order, tangent·(theta_t+1 - theta_t), equals eta·tangent·F⁺∇J (centred per context)."""
    out, rule = [], factory()
    p, pol = mlp_problem()
    start = pol.params.copy(), pol.log_probs(), _tangent(pol)  # every setting's one update starts here
    for seed, (eta, beta) in enumerate(settings(rule)):
        g = np.random.default_rng(300 + seed)
        r, api = fresh(factory, **step_attrs(rule, eta, beta)), BanditAPI(p, g, policy=pol)

        def update(theta, r=r, api=api, g=g):
            return np.asarray(r.update(api, theta.copy(), g), dtype=np.float64)

        def exact(theta, new, eta=eta, beta=beta):
            if np.array_equal(theta, start[0]):
                old, tangent = start[1], start[2]
            else:
                at = pol.with_params(theta)
                old, tangent = at.log_probs(), _tangent(at)
            q = p.rewards - beta * (old - p.log_pi_ref)
            want = _centred(np.einsum("xyd,d->xy", tangent, natural_step(p.rho, tangent, q, np.exp(old), None, eta)))
            got = _centred(np.einsum("xyd,d->xy", tangent, new - theta))
            return float(np.max(np.abs(got - want)) / np.max(np.abs(want))), float(np.sum(got * want) / np.sum(want * want))

        # one update: after a step the linearised system is ill-conditioned (to ~1e-8 relative, or a dead tangent)
        worst = _worst_of_updates(update, exact, pol.params.copy(), 1)
        out.append(_step_result(Result, "MLP step (linearised): NPG on tangent features", eta, beta, "relative error",
                                worst, p.name))
    return out


@contextlib.contextmanager
def one_thread():
    """torch on one intra-op thread inside the block (``TESTBED_TORCH_THREADS=N``: N; 0: torch's default): the
    batteries' arrays are tiny, and more threads only contend (5-10x slower on a loaded 2-core machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(env_threads() or before)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def check_steps(factory, Result) -> list:
    with one_thread():
        return _check_steps(factory, Result)


def _check_steps(factory, Result) -> list:
    kinds = rule_kinds(factory())
    out = check_step_tabular(factory, Result) if "tabular" in kinds else []
    if "lm" in kinds:  # the rule's lm_update on a toy LM: testbed/llm/conformance.py registers it (the llm extra)
        if "lm" not in STEP_BATTERIES:
            out.append(Result("LM step: the LM battery is not loaded (import testbed.llm.conformance; the llm extra)",
                              "-", float("nan"), "loaded", False))
        else:
            out += STEP_BATTERIES["lm"](factory, Result)
    if "loglinear" in kinds:
        out += check_step_loglinear(factory, Result)
    if "mlp" in kinds:
        out += check_step_mlp(factory, Result)
    return out
