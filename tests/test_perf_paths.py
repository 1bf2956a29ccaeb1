"""The fast paths of the solvers (issue 19, issue 17 item 11) against the computations they replace.

- sampled least squares: the Gram matrix counted from (context, y, y') pairs and the per-block sums
  in index order give the dense ``np.add.at`` path's bits, the Laplacian solve of pair rows its
  solution to 1e-12; the many-response path (Y > DUAL_Y,
  through each block's n_b x n_b kernel) gives its solution to 1e-12 and runs a Y = 5000 step in
  O(N·Y) memory, where the dense path needs N·Y² (or X·Y²) floats;
- the exact log-linear step: the normal-equations path with refinement gives the SVD's solution
  to 1e-12, and a stack with one badly conditioned member still gives each member its own result.
"""

import tracemalloc

import numpy as np
import pytest

from testbed.algorithms import ALGORITHMS, build_config
from testbed.policies import PairRows, TabularSoftmax, initial_policy, lstsq, lstsq_step, member, natural, stack
from testbed.problems import TabularBandit, make_tabular


def dense_reference(num_blocks, blocks, rows, targets, ridge=0.0, groups=1):
    """The dense path as it was: outer products summed with np.add.at, then the same block solve."""
    Y = rows.shape[1]
    gram = np.zeros((num_blocks, Y, Y))
    np.add.at(gram, blocks, rows[:, :, None] * rows[:, None, :])
    rhs = np.zeros((num_blocks, Y))
    np.add.at(rhs, blocks, rows * targets[:, None])
    return lstsq._solve_gram(gram, rhs, ridge, groups, Y)


CASES = [(1, 5, 40, 4), (3, 20, 250, 10), (2, 3, 30, 7), (2, 50, 20, 6)]  # stack, contexts, rows, responses


@pytest.mark.parametrize("S,X,N,Y", CASES)
@pytest.mark.parametrize("ridge", [0.0, 0.1])
def test_counted_and_ordered_grams_give_the_dense_paths_bits_and_the_kernel_path_its_solution(S, X, N, Y, ridge):
    rng = np.random.default_rng(S * 1000 + X)
    blocks = np.repeat(np.arange(S), N) * X + rng.integers(X, size=S * N)
    pairs = PairRows(rng.integers(Y, size=S * N), rng.integers(Y, size=S * N), Y)
    t = rng.normal(size=S * N)
    dense = pairs.dense()
    gram = np.zeros((S * X, Y, Y))
    np.add.at(gram, blocks, dense[:, :, None] * dense[:, None, :])
    rhs = np.zeros((S * X, Y))
    np.add.at(rhs, blocks, dense * t[:, None])
    counted = lstsq._pair_gram(S * X, blocks, pairs, t)
    assert np.array_equal(counted[0], gram) and np.array_equal(counted[1], rhs)  # the same bits
    ref = dense_reference(S * X, blocks, dense, t, ridge, S)
    assert np.array_equal(lstsq._block_lstsq(S * X, blocks, dense, t, ridge, S), ref)
    scale = np.abs(ref).max()
    # pairs without ridge: the Laplacian solve (L + P)⁻¹b; with ridge the same solve as the dense path
    got = lstsq._block_lstsq(S * X, blocks, pairs, t, ridge, S)
    if ridge:
        assert np.array_equal(got, ref)
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-12 * scale)
    for rows in (pairs, dense):
        np.testing.assert_allclose(lstsq._solve_dual(S * X, blocks, rows, t, ridge, S, Y), ref, rtol=0, atol=1e-12 * scale)
    # dense rows of sampled NPG's kind (e_y minus the context's frequencies): the kernel path to 1e-12
    probs = rng.dirichlet(np.ones(Y), size=S * X)
    demeaned = lstsq._demean_by_context(blocks, pairs.dense() - probs[blocks], S * X)
    ref = dense_reference(S * X, blocks, demeaned, t, ridge, S)
    got = lstsq._solve_dual(S * X, blocks, demeaned, t, ridge, S, Y)
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-12 * np.abs(ref).max())


def test_the_kernel_path_gives_a_stack_each_members_own_step(monkeypatch):
    monkeypatch.setattr(lstsq, "DUAL_Y", 0)
    rng = np.random.default_rng(3)
    pols = [TabularSoftmax(rng.normal(size=(6, 5))) for _ in range(3)]
    x, y, y2 = (rng.integers(n, size=(3, 40)) for n in (6, 5, 5))
    t = rng.normal(size=(3, 40))
    for kw in ({}, {"ridge": 0.2}, {"context_intercept": True}):
        new, fitted = lstsq_step(stack(pols), x, PairRows(y, y2, 5), t, **kw)
        for s, pol in enumerate(pols):
            alone, fit_s = lstsq_step(pol, x[s], PairRows(y[s], y2[s], 5), t[s], **kw)
            assert np.array_equal(member(new, s).params, alone.params) and np.array_equal(fitted[s], fit_s)


@pytest.mark.parametrize("name,config", [("rebel", {"mode": "sampled", "pairs": 1000}),
                                         ("npg", {"mode": "sampled", "samples": 1000})])
def test_a_sampled_least_squares_step_with_5000_responses_runs_in_order_n_y_memory(name, config):
    """X = 10, Y = 5000, N = 1000: the dense path's N x Y x Y outer products are 200 GB (X·Y² Gram
    blocks alone 2 GB). The step stays below 4·N·Y floats (153 MB) — the sampling of N responses
    itself holds N x Y probabilities — and improves the objective on a problem where it must."""
    X, Y, N = 10, 5000, 1000
    problem = make_tabular(contexts=X, actions=Y, seed=0)
    cls = ALGORITHMS[name]
    rng = np.random.default_rng(0)
    algo = cls(build_config(cls.Config, config, "t"), problem, rng)
    policy = initial_policy(problem)
    tracemalloc.start()
    try:
        step = algo.update(policy, rng)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * N * Y * 8, peak
    assert problem.value(step.policy.probs()) > problem.value(policy.probs())


def test_the_exact_log_linear_fast_path_gives_the_svd_solution(monkeypatch):
    rng = np.random.default_rng(0)
    X, Y, d = 300, 30, 12  # rows·d² above FAST_WORK for both stages of REBEL and NPG
    assert X * (Y - 1) * d * d >= natural.FAST_WORK
    phi = rng.random((X, Y, d))
    q = rng.random((X, Y))
    rho = np.full(X, 1 / X)
    z = phi @ rng.normal(size=d)
    pi = np.exp(z - z.max(-1, keepdims=True))
    pi /= pi.sum(-1, keepdims=True)
    mu = np.full((X, Y), 1 / Y)
    fast = [natural.natural_step(rho, phi, q, pi, m) for m in (None, mu)]
    monkeypatch.setattr(natural, "FAST_WORK", 10 ** 30)
    slow = [natural.natural_step(rho, phi, q, pi, m) for m in (None, mu)]
    for a, b in zip(fast, slow):
        assert not np.array_equal(a, b)  # a different computation ...
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-12 * np.abs(b).max())  # ... with the same solution


def test_the_one_pass_step_of_a_realisable_problem_is_the_weight_free_solution(monkeypatch):
    # large and well conditioned: one normal-equations solve of the weighted rows, no realisable stage; on a
    # realisable problem (q = φ·theta + a per-context offset) that solution is unique, so it must be the
    # weight-free stage's (which the two-stage path takes, FAST_WORK raised) and recover eta·theta
    rng = np.random.default_rng(3)
    X, Y, d = 300, 30, 12
    phi = rng.random((X, Y, d))
    theta = rng.normal(size=d)
    q = phi @ theta + rng.normal(size=(X, 1))
    rho = rng.dirichlet(np.ones(X))
    z = phi @ rng.normal(size=d)
    pi = np.exp(z - z.max(-1, keepdims=True))
    pi /= pi.sum(-1, keepdims=True)
    calls, real = [], natural._realisable
    monkeypatch.setattr(natural, "_realisable", lambda *a: calls.append(1) or real(*a))
    fast = [natural.natural_step(rho, phi, q, pi, m, 0.5) for m in (None, np.full((X, Y), 1 / Y))]
    assert calls == []  # the realisable stage was not run
    monkeypatch.setattr(natural, "FAST_WORK", 10 ** 30)
    slow = [natural.natural_step(rho, phi, q, pi, m, 0.5) for m in (None, np.full((X, Y), 1 / Y))]
    assert len(calls) == 2
    for a, b in zip(fast, slow):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-12 * np.abs(b).max())
        np.testing.assert_allclose(a, 0.5 * theta, rtol=1e-10)


def test_a_stack_of_exact_steps_with_a_rank_deficient_member_gives_each_member_its_own_step():
    rng = np.random.default_rng(4)
    X, Y, d = 300, 30, 12
    phi = rng.random((3, X, Y, d))
    q = rng.random((3, X, Y))
    rho = np.full((3, X), 1 / X)
    z = np.einsum("sxyd,sd->sxy", phi, rng.normal(size=(3, d)))
    phi[1, ..., 5] = phi[1, ..., 4]  # member 1 rank-deficient: its weighted Gram matrix is singular (two stages, SVD)
    pi = np.exp(z - z.max(-1, keepdims=True))
    pi /= pi.sum(-1, keepdims=True)
    for mu in (None, np.full((3, X, Y), 1 / Y)):
        whole = natural.natural_step(rho, phi, q, pi, mu)
        for s in range(3):
            alone = natural.natural_step(rho[s], phi[s], q[s], pi[s], None if mu is None else mu[s])
            assert np.array_equal(whole[s], alone)
    blocks = natural._weighted_blocks(rho, phi, q, pi, None)
    assert natural._normal_equations(blocks)[1].tolist() == [True, False, True]


def test_a_stack_with_a_badly_conditioned_member_gives_each_member_its_own_solution():
    rng = np.random.default_rng(1)
    M = rng.random((3, 5000, 16))
    M[1, :, 5] = M[1, :, 4]  # member 1 rank-deficient: its min-norm solution needs the SVD
    t = rng.random((3, 5000))
    whole = natural.min_norm_solve(M, t)
    for s in range(3):
        assert np.array_equal(whole[s], natural.min_norm_solve(M[s], t[s]))
    np.testing.assert_allclose(whole[1], np.linalg.lstsq(M[1], t[1], rcond=None)[0], rtol=1e-10)
    np.testing.assert_allclose(whole[0], np.linalg.lstsq(M[0], t[0], rcond=None)[0], rtol=1e-12)


def test_lm_runs_set_torch_threads_like_the_bandit_workers_and_the_variable_overrides(monkeypatch):
    pytest.importorskip("transformers")
    import torch

    from testbed.errors import THREADS_ENV, InputError, env_threads
    from testbed.training import torch_threads

    before = torch.get_num_threads()
    other = 2 if before != 2 else 3
    try:
        torch.set_num_threads(other)
        monkeypatch.delenv(THREADS_ENV, raising=False)
        with torch_threads(env_threads()) as n:
            assert n == 1 == torch.get_num_threads()
        assert torch.get_num_threads() == other  # given back
        monkeypatch.setenv(THREADS_ENV, "2")
        with torch_threads(env_threads()) as n:
            assert n == 2 == torch.get_num_threads()
        monkeypatch.setenv(THREADS_ENV, "0")  # torch's own
        with torch_threads(env_threads()) as n:
            assert n == other
        monkeypatch.setenv(THREADS_ENV, "-3")
        with pytest.raises(InputError, match=THREADS_ENV):
            env_threads()
        with pytest.raises(RuntimeError), torch_threads(1):  # given back when the run raises
            raise RuntimeError("a run that fails")
        assert torch.get_num_threads() == other
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("rho", [None, [0.5, 0.0, 0.25, 0.25], [1e-12, 1 - 1e-12], [0.1] * 7 + [0.3]])
def test_sampled_contexts_are_the_draws_of_rng_choice(rho):
    X = 5 if rho is None else len(rho)
    problem = TabularBandit(np.zeros((X, 3)), rho=rho)
    for seed in range(5):
        a, b = np.random.default_rng(seed), np.random.default_rng(seed)
        for n in (1, 17, 1000):
            assert np.array_equal(problem.sample_contexts(a, n), b.choice(X, size=n, p=problem.rho))
        assert a.random() == b.random()  # the generators are left in the same state


def test_the_laplacian_solve_is_the_pseudo_inverse_on_multigraphs_with_several_components():
    """(L + P)⁻¹b = L⁺b for b in the range of L, with components found by the batched reachability closure:
    random multigraphs with isolated responses and several components, against numpy's pinv."""
    from testbed.policies.lstsq_onehot import pair_solve

    rng = np.random.default_rng(0)
    for Y in (1, 2, 5, 12, 39):
        B = 6
        gram = np.zeros((B, Y, Y))
        for b in range(B):
            alive = rng.random(Y) < 0.7  # some responses in no pair
            for _ in range(int(rng.integers(0, 2 * Y))):
                y, y2 = rng.integers(Y, size=2)
                if y != y2 and alive[y] and alive[y2] and (b % 2 == 0 or (y < Y // 2) == (y2 < Y // 2)):
                    e = np.zeros(Y)
                    e[y], e[y2] = 1, -1
                    gram[b] += np.outer(e, e)  # odd blocks: no edge between the halves (>= 2 components)
        rhs = np.einsum("byz,bz->by", gram, rng.normal(size=(B, Y)))  # in the range of each L
        want = np.einsum("byz,bz->by", np.linalg.pinv(gram), rhs)
        got = pair_solve(gram, rhs)
        scale = max(1.0, float(np.abs(want).max()))
        assert np.abs(got - want).max() <= 1e-10 * scale, (Y, np.abs(got - want).max())
