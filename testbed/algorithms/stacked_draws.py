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
from testbed.policies import Policy, count_at_most, inverse_cdf
from testbed.problems import PreferenceBandit, TabularBandit

_CONTEXTS = (TabularBandit.sample_contexts, PreferenceBandit.sample_contexts)  # both rng.choice(X, p=rho)'s draws
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
    return all(type(m).sample_contexts in _CONTEXTS for m in getattr(problem, "members", [problem]))


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
