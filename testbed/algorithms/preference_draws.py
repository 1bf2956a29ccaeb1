"""Random draws of the sampled preference algorithms, for one seed or a stack of seeds as one array computation.

A draw is declared as the list of what one seed takes from its generator, in order: ``("x", n)`` contexts
x ~ rho, ``("u", n)`` uniforms (a response by the inverse CDF of pi_t, a Bernoulli preference label),
``("i", high, n)`` integers. Each seed's generator is called in that order, consecutive uniforms in one
call (``rng.random(a + b)`` gives the numbers of ``rng.random(a)`` then ``rng.random(b)``; contexts are
uniforms too, by the inverse CDF of :meth:`TabularBandit.sample_contexts`, which is ``rng.choice``'s), and
what is computed from the numbers runs on the whole stack: member s gets bit for bit the draws of its
run alone, which are the draws of ``problem.sample_contexts``, :meth:`Policy.sample` and
:meth:`PreferenceBandit.sample_preferences` in that order. A problem whose ``sample_contexts`` is replaced
(a subclass) is asked for its contexts seed by seed.
"""

from __future__ import annotations

import numpy as np

from testbed.algorithms.stacked_draws import at, base_contexts, cdf_columns, cdf_draw, contexts_from_uniforms, flat_rows
from testbed.policies import Policy


def draw(rng, problem, parts: list[tuple]) -> list[np.ndarray]:
    """The draws ``parts`` declares, for one seed (``rng`` a generator: arrays [n]) or a stack (a list of
    generators, ``problem`` a stack with ``members``: arrays [S, n])."""
    stacked = isinstance(rng, list)
    gens, members = (rng, problem.members) if stacked else ([rng], [problem])
    uniform_x = base_contexts(problem)
    kinds = ["u" if p[0] == "u" or (p[0] == "x" and uniform_x) else p[0] for p in parts]

    def one(g, m) -> list[np.ndarray]:  # one seed's calls: each run of consecutive uniforms in one call
        out, i = [], 0
        while i < len(parts):
            j = i
            while j < len(parts) and kinds[j] == "u":
                j += 1
            if j > i:
                out.append(g.random(sum(p[-1] for p in parts[i:j])))
                i = j
            else:
                out.append(m.sample_contexts(g, parts[i][1]) if kinds[i] == "x" else g.integers(parts[i][1], size=parts[i][2]))
                i += 1
        return out

    calls = [np.stack(a) if stacked else a[0] for a in zip(*[one(g, m) for g, m in zip(gens, members)])]
    out, c, start = [], -1, 0
    for i, p in enumerate(parts):  # the parts, cut out of the calls (a run of uniforms: column ranges)
        if kinds[i] != "u" or i == 0 or kinds[i - 1] != "u":
            c, start = c + 1, 0
        a = calls[c][..., start:start + p[-1]] if kinds[i] == "u" else calls[c]
        start += p[-1]
        out.append(contexts_from_uniforms(problem.rho, a) if p[0] == "x" and uniform_x else a)
    return out


def responses(policy: Policy, x: np.ndarray, u: np.ndarray) -> np.ndarray:
    """y ~ pi_t(.|x) by the inverse CDF of uniforms u: :meth:`Policy.sample` (the table's cumulative sums, row by
    row the same arithmetic; :func:`cdf_draw` compares each draw with its row's entries, no N x Y array)."""
    probs = policy.probs()
    return cdf_draw(cdf_columns(np.cumsum(probs, axis=-1)), flat_rows(x, probs.shape[-2]), u)


def labels(preferences: np.ndarray, x, y, y2, u: np.ndarray) -> np.ndarray:
    """The Bernoulli preference oracle: 1.0 where y beats y' (u < P(y ≻ y' | x)), else 0.0."""
    return (u < at(preferences, x, y, y2)).astype(np.float64)


def win_rate_parts(n: int, k: int, oracle: str) -> list[tuple]:
    """What :func:`estimate_win_rates` draws for n responses: k opponents each, and their labels (Bernoulli)."""
    return [("u", n * k)] + ([("u", n * k)] if oracle == "bernoulli" else [])


def estimate_win_rates(policy: Policy, preferences: np.ndarray, x, y, k: int, oracle: str, u: list) -> np.ndarray:
    """r̂_t(x_i, y_i): the mean of k comparisons of y_i with fresh y'' ~ pi_t (a Bernoulli label, or P itself),
    from the uniforms ``u`` that :func:`win_rate_parts` declares."""
    xs, ys = np.repeat(x, k, axis=-1), np.repeat(y, k, axis=-1)
    opp = responses(policy, xs, u[0])
    out = labels(preferences, xs, ys, opp, u[1]) if oracle == "bernoulli" else at(preferences, xs, ys, opp)
    return out.reshape(x.shape + (k,)).mean(axis=-1)
