"""The one-hot (tabular) fast paths of the sampled least-squares solvers and the stacked draws.

- sampled NPG's closed form from counts (testbed/policies/lstsq_onehot.py) is the general minimum-norm
  least-squares solution (np.linalg.lstsq on the dense, exactly demeaned score rows) to 1e-10, on random
  samples including rank-deficient contexts (responses never drawn, a single response, no sample at all)
  and near-deterministic policies; with damping it is the dense damped solve;
- the stacked draws (one call per generator, inverse CDFs on the whole stack) give every member the draws
  of its run alone, bit for bit, and a stack of sampled REBEL / NPG runs equals the per-seed loop bit for bit.
"""

import numpy as np
import pytest

from testbed.algorithms.stacked_draws import cdf_columns, cdf_draw, contexts_from_uniforms, policy_samples
from testbed.experiments.runner import run_batch, run_one
from testbed.experiments.spec import RunPlan
from testbed.policies import TabularSoftmax, inverse_cdf, log_softmax, lstsq_step, member, stack
from testbed.policies.lstsq_onehot import npg_delta, npg_step
from testbed.problems import ProblemBatch, TabularBandit, make_tabular


def dense_npg(x, y, t, X, Y, ridge=0.0):
    """The step of sampled NPG by the textbook route: rows e_y - ĉ_x/n_x demeaned per context (exact from the
    integer counts), targets demeaned per context, np.linalg.lstsq per context (or the damped dense solve)."""
    rows, targets, blocks = [], [], []
    for c in range(X):
        m = x == c
        if not m.any():
            continue
        R = np.eye(Y)[y[m]]
        rows.append(R - np.bincount(y[m], minlength=Y) / m.sum())
        targets.append(t[m] - t[m].mean())
        blocks.append(c)
    delta = np.zeros((X, Y))
    if ridge == 0:
        for c, R, tt in zip(blocks, rows, targets):
            delta[c] = np.linalg.lstsq(R, tt, rcond=None)[0]
        return delta
    grams = {c: R.T @ R for c, R in zip(blocks, rows)}
    scale = sum(np.trace(g) for g in grams.values()) / (X * Y)
    if scale <= 0:
        return delta
    for c, R, tt in zip(blocks, rows, targets):
        delta[c] = np.linalg.solve(grams[c] + ridge * scale * np.eye(Y), R.T @ tt)
    return delta


def random_samples(rng, X, Y, N, sharp):
    """N samples of a policy with logits of scale ``sharp`` (large: near-deterministic), some contexts
    and responses left out on purpose."""
    logits = sharp * rng.normal(size=(X, Y))
    rho = rng.dirichlet(np.ones(X))
    rho[rng.random(X) < 0.2] = 0.0  # contexts never sampled
    rho = rho / rho.sum() if rho.sum() > 0 else np.full(X, 1 / X)
    x = rng.choice(X, size=N, p=rho)
    p = np.exp(log_softmax(logits))
    p[:, rng.random(Y) < 0.2] = 0.0  # responses never sampled anywhere
    p[p.sum(1) == 0, 0] = 1.0
    p /= p.sum(1, keepdims=True)
    y = np.array([rng.choice(Y, p=p[c]) for c in x])
    return logits, x, y, rng.normal(size=N) * rng.choice([1e-3, 1.0, 1e3])


@pytest.mark.parametrize("sharp", [0.0, 1.0, 30.0])
@pytest.mark.parametrize("ridge", [0.0, 0.1])
def test_npg_closed_form_is_the_minimum_norm_least_squares_solution(sharp, ridge):
    rng = np.random.default_rng(int(sharp * 10 + ridge * 100))
    for _ in range(30):
        X, Y = int(rng.integers(1, 8)), int(rng.integers(1, 9))
        N = int(rng.integers(1, 60))
        _, x, y, t = random_samples(rng, X, Y, N, sharp)
        counts = np.zeros((X, Y))
        sums = np.zeros((X, Y))
        np.add.at(counts, (x, y), 1.0)
        np.add.at(sums, (x, y), t)
        want = dense_npg(x, y, t, X, Y, ridge)
        got = npg_delta(counts, sums, ridge)
        assert np.abs(got - want).max() <= 1e-10 * max(1.0, np.abs(want).max()), (X, Y, N)


def test_a_context_with_one_response_drawn_gets_no_step_near_determinism():
    """Every sample of every context is one response (pi_t near-deterministic): the least-squares problem
    has no information, the minimum-norm step is exactly zero (the old dense solver inverted rounding noise
    of the rows e_y - pi minus their mean here: steps of 1e6 and more)."""
    X, Y = 4, 5
    logits = np.full((X, Y), -60.0)
    logits[:, 2] = 0.0
    policy = TabularSoftmax(logits)
    x = np.repeat(np.arange(X), 27)
    y = np.full(len(x), 2)
    t = 10 * np.random.default_rng(0).random(len(x))
    new = npg_step(policy, x, y, t)
    assert np.array_equal(new.params, policy.params)
    # with information (y varies within contexts) the closed form agrees with the dense minimum-norm lstsq step
    y[::3] = 4
    new = npg_step(policy, x, y, t)
    want = dense_npg(x, y, t, X, Y)
    assert np.abs(new.params - log_softmax(policy.params + want)).max() <= 1e-10


def test_npg_closed_form_equals_the_general_solver_where_that_is_well_conditioned():
    """Away from determinism the general least-squares step (dense scores with a per-context intercept) and
    the closed form give the same policy to 1e-10."""
    rng = np.random.default_rng(3)
    for _ in range(10):
        logits, x, y, t = random_samples(rng, 6, 5, 200, 1.0)
        policy = TabularSoftmax(logits)
        rows = np.eye(5)[y] - np.exp(policy.log_probs_at(x))
        general, _ = lstsq_step(policy, x, rows, t, context_intercept=True)
        assert np.abs(npg_step(policy, x, y, t).params - general.params).max() <= 1e-10


def test_stacked_npg_closed_form_is_each_members_bit_for_bit():
    rng = np.random.default_rng(5)
    parts = [random_samples(rng, 5, 4, 80, 2.0) for _ in range(4)]
    policies = [TabularSoftmax(p[0]) for p in parts]
    for ridge in (0.0, 0.2):
        got = npg_step(stack(policies), *(np.stack([p[i] for p in parts]) for i in (1, 2, 3)), ridge=ridge)
        for s, (pol, (_, x, y, t)) in enumerate(zip(policies, parts)):
            assert np.array_equal(member(got, s).params, npg_step(pol, x, y, t, ridge=ridge).params)


def test_cdf_draw_is_inverse_cdf_on_the_gathered_rows():
    rng = np.random.default_rng(0)
    for X, Y, N in ((3, 1, 10), (7, 10, 500), (2, 70, 40), (3, 127, 300), (2, 128, 300), (2, 300, 300)):  # (int8 counts: < 128)
        cdf = np.cumsum(np.exp(log_softmax(rng.normal(size=(4, X, Y)) * 5)), axis=-1)
        x, u = rng.integers(X, size=(4, N)), rng.random((4, N))
        want = inverse_cdf(cdf[np.arange(4)[:, None], x], u)
        assert np.array_equal(cdf_draw(cdf_columns(cdf), np.arange(4)[:, None] * X + x, u), want)
        assert np.array_equal(cdf_draw(cdf_columns(cdf[1]), x[1], u[1]), want[1])


@pytest.mark.parametrize("X", [1, 5, 100])
def test_stacked_contexts_are_each_members_inverse_cdf(X):
    """One rho for the stack (one count) or one per member (one search each), short and long rho."""
    rng = np.random.default_rng(X)
    u = rng.random((3, 200))
    u[:, 0] = 0.0
    for rho in (np.tile(rng.dirichlet(np.ones(X)), (3, 1)), rng.dirichlet(np.ones(X), size=3)):
        if X > 1:  # a context that is never drawn
            rho[:, 0] = 0.0
            rho /= rho.sum(axis=1, keepdims=True)
        want = [TabularBandit(np.zeros((X, 2)), rho=r).sample_contexts(Replay(v), len(v)) for r, v in zip(rho, u)]
        assert np.array_equal(contexts_from_uniforms(rho, u), np.stack(want))


class Replay:
    """A generator stand-in that hands out given uniforms."""

    def __init__(self, u):
        self.u = u

    def random(self, n):
        return self.u[:n]


def test_stacked_policy_samples_are_each_seeds_own_draws():
    """x ~ rho, y ~ pi_t, noisy rewards: a stack (members with and without reward noise, different rho)
    draws what each seed draws alone with TabularBandit.sample_contexts, Policy.sample, sample_rewards."""
    problems = [make_tabular(contexts=6, actions=4, seed=s, noise_std=0.3 * (s % 2)) for s in range(3)]
    problems[2].rho = np.array([0.5, 0.0, 0.1, 0.1, 0.1, 0.2])
    rng = np.random.default_rng(1)
    policies = [TabularSoftmax(rng.normal(size=(6, 4))) for _ in problems]
    for n in (3, 50):  # fewer draws than contexts (row by row) and more (the table)
        gens = [np.random.default_rng(10 + s) for s in range(3)]
        x, y, r, lp = policy_samples(stack(policies), gens, ProblemBatch(problems), n)
        for s, (pol, prob) in enumerate(zip(policies, problems)):
            g = np.random.default_rng(10 + s)
            xs = prob.sample_contexts(g, n)
            ys = pol.sample(g, xs)
            rs = prob.sample_rewards(g, xs, ys)
            assert np.array_equal(x[s], xs) and np.array_equal(y[s], ys) and np.array_equal(r[s], rs)
            assert np.array_equal(lp[s], pol.log_probs_at(xs)[np.arange(n), ys])
            assert g.random() == gens[s].random()  # the generators are left in the same state


@pytest.mark.parametrize("name, cfg", [
    ("rebel", {"mode": "sampled", "pairs": 60, "eta": 3.0}),
    ("rebel", {"mode": "sampled", "pairs": 60, "y_prime": "ref", "beta": 0.05}),
    ("rebel", {"mode": "sampled", "pairs": 3, "y_prime": "uniform"}),
    ("npg", {"mode": "sampled", "samples": 80, "eta": 10.0}),
    ("npg", {"mode": "sampled", "samples": 4, "beta": 0.1, "damping": 0.1}),
])
def test_a_stack_of_sampled_least_squares_runs_equals_the_loop_bit_for_bit(name, cfg):
    problems = [make_tabular(contexts=6, actions=5, seed=s % 2, noise_std=0.2 * (s % 2)) for s in range(4)]
    plans = [RunPlan(f"s{s}", problems[s].name, name, name, name, cfg, {}, None, s, 12, 4) for s in range(4)]
    batched = run_batch(plans, problems)
    for plan, problem, (rows, policy, _) in zip(plans, problems, batched):
        alone_rows, alone_policy, _ = run_one(plan, problem)
        assert rows == alone_rows
        assert np.array_equal(policy.params, alone_policy.params)


def test_sampled_npg_at_eta_10_stays_near_optimal():
    """The spec tabular_rebel_vs_npg's npg-sampled(eta=10), seed 0, 200 iterations: with the closed form no
    step blows up and the policy stays within 0.01 of the optimal value (the old solver fell to 0.69)."""
    problem = make_tabular(contexts=20, actions=10, seed=0)
    plan = RunPlan("s0", problem.name, "npg", "npg", "npg", {"mode": "sampled", "samples": 500, "eta": 10},
                   {}, None, 0, 200, 200)
    rows, _, _ = run_one(plan, problem)
    assert rows[-1]["suboptimality"] < 0.01


def test_loglinear_npg_step_is_zero_when_every_context_drew_one_response():
    """Log-linear sampled NPG (the general solver, per-context intercept): where each context's samples are
    all one response the demeaned rows are exactly zero — no information, no step — and not the rounding of
    their mean, which the pseudo-inverse would invert (eta = 10 on linear_rebel_vs_npg: steps of 512-768)."""
    from testbed.policies import LogLinear, mean_score_features, score_features
    from testbed.problems import make_linear

    problem = make_linear(contexts=5, actions=6, dim=4, seed=0)
    policy = LogLinear(problem.features, np.array([3.0, -7.0, 11.0, 0.3]) * 4)
    rng = np.random.default_rng(0)
    x = rng.integers(5, size=200)
    y = np.argmax(policy.log_probs(), axis=1)[x]  # the likeliest response of each context, always
    scores = score_features(policy, x, y) - mean_score_features(policy, x)
    new, _ = lstsq_step(policy, x, scores, 10 * rng.normal(size=200), context_intercept=True)
    assert np.array_equal(new.params, policy.params)
    y[::7] = (y[::7] + 1) % 6  # some information: the step is lstsq's on the exactly demeaned rows
    scores = score_features(policy, x, y) - mean_score_features(policy, x)
    t = rng.normal(size=200)
    new, _ = lstsq_step(policy, x, scores, t, context_intercept=True)
    rows = np.concatenate([problem.features[x[x == c], y[x == c]] - problem.features[x[x == c], y[x == c]].mean(0)
                           for c in range(5)])
    tt = np.concatenate([t[x == c] - t[x == c].mean() for c in range(5)])
    want = np.linalg.lstsq(rows, tt, rcond=None)[0]
    assert np.abs(new.params - policy.params - want).max() <= 1e-10 * max(1.0, np.abs(want).max())
