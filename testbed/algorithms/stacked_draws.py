"""Random draws of a stack of seeds as one array computation, with each seed's own random numbers.

Each seed's generator is called once per draw, in the order one seed draws alone (N uniforms at a time,
so a single ``rng.random(k·N)`` gives the same numbers as k calls of ``rng.random(N)``), and what is
computed from the uniforms — contexts by the inverse CDF of rho, responses by the inverse CDF of pi_t,
oracle labels — runs on the whole stack: member s gets bit for bit the draws of its run alone. These
functions compose :meth:`TabularBandit.sample_contexts`, :meth:`Policy.sample`,
:func:`testbed.datasets.sample_distinct` and :meth:`PreferenceOracle.label`; where any of those is
replaced (a subclass, a conformance view) the callers take the seed-by-seed path instead.
"""

from __future__ import annotations

import numpy as np

from testbed.datasets import PreferenceOracle, sample_distinct
from testbed.policies import Policy, count_at_most, inverse_cdf, take_contexts
from testbed.problems import TabularBandit

_BASE = (TabularBandit.sample_contexts, Policy.sample, sample_distinct, PreferenceOracle.label, PreferenceOracle.prob)


def contexts_from_uniforms(rho: np.ndarray, u: np.ndarray) -> np.ndarray:
    """The contexts that uniforms u select by :meth:`TabularBandit.sample_contexts`' inverse CDF (rho [X], u [N];
    or a stack, rho [S, X], u [S, N]): the number of entries of cdf = cumsum(rho)/total at most u."""
    cdf = np.cumsum(rho, axis=-1)
    cdf /= cdf[..., -1:]
    if u.ndim == 1:
        return cdf.searchsorted(u, side="right")
    return count_at_most(cdf[:, None, :], u)


def base_contexts(problem) -> bool:
    """Whether the problem (every member of a stack) draws contexts by the base inverse CDF."""
    return all(type(m).sample_contexts is _BASE[0] for m in getattr(problem, "members", [problem]))


def online_pairs(policy: Policy, rng, problem, oracles: list, n: int, law: str, distinct_fn) -> tuple | None:
    """DPO's online round for one seed (``rng`` a generator) or a stack (a list): x ~ rho, y ~ pi_t, y' ~ pi_t
    (given y' != y for ``law`` "distinct"), labelled by each member's oracle; None where a composed function is
    replaced (``distinct_fn``: the caller's ``sample_distinct``)."""
    if not (base_contexts(problem) and type(policy).sample is _BASE[1] and distinct_fn is _BASE[2]
            and all(type(o).label is _BASE[3] and type(o).prob is _BASE[4] for o in oracles)):
        return None
    gens = rng if isinstance(rng, list) else [rng]
    u = np.stack([g.random(4 * n) for g in gens]).reshape(len(gens), 4, n)
    if not isinstance(rng, list):
        u = u[0]
    u = np.moveaxis(u, -2, 0)  # [4, (S,) N]: the contexts', y's, y''s and the label's uniforms
    x = contexts_from_uniforms(problem.rho, u[0])
    probs = np.exp(policy.log_probs_at(x))
    cdf = np.cumsum(probs, axis=-1)
    y = inverse_cdf(cdf, u[1])
    if law == "independent":
        y2 = inverse_cdf(cdf, u[2])
    else:  # sample_distinct: pi_t with y's mass removed (uniform over the others where nothing is left)
        q = probs.copy()
        np.put_along_axis(q, y[..., None], 0.0, axis=-1)
        empty = q.sum(axis=-1) <= 0
        q[empty] = 1.0
        np.put_along_axis(q, y[..., None], 0.0, axis=-1)
        y2 = inverse_cdf(np.cumsum(q, axis=-1), u[2])
    if isinstance(rng, list):
        P = np.stack([o.P for o in oracles])
        p = P[np.arange(len(gens))[:, None], x, y, y2]
    else:
        p = oracles[0].P[x, y, y2]
    win = u[3] < p
    return x, np.where(win, y, y2), np.where(win, y2, y)


def at(table: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """table[x_i, y_i] for one problem; table[s, x_si, y_si] for a stack (table [S, X, Y], x, y [S, N])."""
    return table[x, y] if x.ndim == 1 else table[np.arange(len(x))[:, None], x, y]


def pick(rows: np.ndarray, y: np.ndarray) -> np.ndarray:
    """rows[..., i, y_i]: one entry per row (rows [..., N, Y], indices [..., N])."""
    return np.take_along_axis(rows, y[..., None], axis=-1)[..., 0]


def policy_rows(policy: Policy, x: np.ndarray, num_contexts: int) -> tuple[np.ndarray, np.ndarray]:
    """ln pi_t(.|x_i) and its CDF cumsum(exp(.)) for each context drawn: with at least as many draws as contexts
    the whole table's rows gathered (each row's arithmetic is the same: fewer exponentials), else row by row."""
    if x.shape[-1] >= num_contexts:
        table = policy.log_probs()
        return take_contexts(table, x), take_contexts(np.cumsum(np.exp(table), axis=-1), x)
    log_pi = policy.log_probs_at(x)
    return log_pi, np.cumsum(np.exp(log_pi), axis=-1)


def policy_samples(policy: Policy, rng, problem, n: int) -> tuple | None:
    """x ~ rho, y ~ pi_t and the sampled rewards r(x, y) (+ noise) of one seed (``rng`` a generator) or a stack
    (a list; ``problem`` a ProblemBatch), with ln pi_t(y|x): each generator gives the n + n uniforms and the n
    normals of :meth:`TabularBandit.sample_contexts`, :meth:`Policy.sample` and
    :meth:`TabularBandit.sample_rewards` one after the other; None where one of those is replaced."""
    members = getattr(problem, "members", [problem])
    if not (base_contexts(problem) and type(policy).sample is _BASE[1]
            and all(type(m).sample_rewards is TabularBandit.sample_rewards for m in members)):
        return None
    stacked = isinstance(rng, list)
    gens = rng if stacked else [rng]
    u = np.stack([g.random(2 * n) for g in gens])
    noise = [g.standard_normal(n) if m.noise_std > 0 else np.zeros(n) for g, m in zip(gens, members)]
    if not stacked:
        u, noise = u[0], noise[0]
    x = contexts_from_uniforms(problem.rho, u[..., :n])
    log_pi, cdf = policy_rows(policy, x, problem.num_contexts)
    y = inverse_cdf(cdf, u[..., n:])
    r = at(problem.rewards, x, y)
    std = np.asarray(problem.noise_std)[..., None] if stacked else problem.noise_std
    noisy = np.asarray([m.noise_std > 0 for m in members])[:, None] if stacked else problem.noise_std > 0
    return x, y, np.where(noisy, r + std * np.asarray(noise), r), pick(log_pi, y)
