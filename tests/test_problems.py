"""Problems: generators, exact helpers against independent computations, files, gym envs."""

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from scipy.optimize import minimize
from scipy.special import softmax

import testbed  # noqa: F401  (registers the environments)
from testbed.problems import ENV_IDS, LinearBandit, TabularBandit, load_problem, make_linear, make_tabular


@pytest.mark.parametrize("family", ["random", "needle", "gap"])
def test_families_are_seeded_and_in_unit_interval(family):
    a = make_tabular(family, contexts=7, actions=5, seed=3)
    b = make_tabular(family, contexts=7, actions=5, seed=3)
    c = make_tabular(family, contexts=7, actions=5, seed=4)
    np.testing.assert_array_equal(a.rewards, b.rewards)
    assert not np.array_equal(a.rewards, c.rewards)
    assert a.rewards.min() >= 0 and a.rewards.max() <= 1
    la = make_linear(family, contexts=7, actions=5, dim=3, seed=3)
    np.testing.assert_allclose(la.rewards, la.features @ la.theta_star, atol=1e-15)
    assert la.misspecification() == 0 and la.rewards.min() >= 0 and la.rewards.max() <= 1


def test_needle_and_gap_structure():
    n = make_tabular("needle", contexts=9, actions=6, seed=0)
    assert np.all((n.rewards == 1).sum(axis=1) == 1) and np.all((n.rewards == 0).sum(axis=1) == 5)
    g = make_tabular("gap", contexts=9, actions=6, seed=0, gap=0.25)
    top2 = np.sort(g.rewards, axis=1)[:, -2:]
    np.testing.assert_allclose(top2[:, 1] - top2[:, 0], 0.25)
    np.testing.assert_allclose(g.optimal_value(), 1.0)


def test_misspecified_linear_rewards():
    p = make_linear("random", contexts=6, actions=4, dim=3, seed=1, misspecification=0.3)
    assert 0 < p.misspecification() <= 0.3
    assert p.rewards.min() >= 0 and p.rewards.max() <= 1


def test_exact_helpers_against_independent_computations():
    rng = np.random.default_rng(0)
    X, Y, beta = 4, 5, 0.7
    p = TabularBandit(rng.normal(size=(X, Y)), rng.dirichlet(np.ones(X)), rng.dirichlet(np.ones(Y), size=X))
    pi = rng.dirichlet(np.ones(Y), size=X)
    # J(pi) and J* by explicit sums
    assert p.value(pi) == pytest.approx(sum(p.rho[x] * pi[x, y] * p.rewards[x, y] for x in range(X) for y in range(Y)))
    assert p.optimal_value() == pytest.approx(sum(p.rho[x] * max(p.rewards[x]) for x in range(X)))
    assert p.value(p.optimal_policy()) == pytest.approx(p.optimal_value())
    # pi*_beta maximises J_beta: compare with a numerical maximisation over logits (scipy)
    res = minimize(lambda z: -p.regularised_value(softmax(z.reshape(X, Y), axis=1), beta), np.zeros(X * Y),
                   method="BFGS", options={"gtol": 1e-10})
    np.testing.assert_allclose(softmax(res.x.reshape(X, Y), axis=1), p.regularised_optimum(beta), atol=1e-5)
    # kl_reg_gap = J_beta(pi*) - J_beta(pi) = beta·E_x KL(pi || pi*)
    gap = p.regularised_value(p.regularised_optimum(beta), beta) - p.regularised_value(pi, beta)
    assert p.kl_reg_gap(pi, beta) == pytest.approx(gap, rel=1e-10)
    # KL against scipy.stats.entropy
    from scipy.stats import entropy
    assert p.kl_ref(pi) == pytest.approx(sum(p.rho[x] * entropy(pi[x], p.pi_ref[x]) for x in range(X)))
    assert p.kl_ref(pi, np.log(pi)) == pytest.approx(p.kl_ref(pi), rel=1e-12)


def test_optimal_policy_splits_ties():
    p = TabularBandit([[1.0, 1.0, 0.0], [0.0, 0.5, 0.2]])
    np.testing.assert_allclose(p.optimal_policy(), [[0.5, 0.5, 0], [0, 1, 0]])


@pytest.mark.parametrize("make", [lambda: make_tabular("gap", 5, 4, seed=2, noise_std=0.3),
                                  lambda: make_linear("needle", 5, 4, dim=3, seed=2, misspecification=0.2)])
def test_save_load_round_trip_exactly(tmp_path, make):
    p = make()
    p.save(tmp_path / "inst.npz")
    q = load_problem(tmp_path / "inst.npz")
    assert type(q) is type(p) and q.name == p.name and q.noise_std == p.noise_std
    for k, v in p.arrays().items():
        np.testing.assert_array_equal(q.arrays()[k], v)
    assert not list(tmp_path.glob(".*"))  # atomic write leaves no temp files


def test_user_npz_with_only_rewards_and_features(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "t.npz", rewards=rng.random((3, 4)))
    t = load_problem(tmp_path / "t.npz")
    assert isinstance(t, TabularBandit) and t.name == "t"
    np.testing.assert_allclose(t.rho, 1 / 3) and np.testing.assert_allclose(t.pi_ref, 1 / 4)
    np.savez(tmp_path / "l.npz", features=rng.random((3, 4, 2)), theta_star=[1.0, -1.0])
    lin = load_problem(tmp_path / "l.npz")
    assert isinstance(lin, LinearBandit)
    np.testing.assert_allclose(lin.rewards, lin.features @ [1.0, -1.0])


@pytest.mark.parametrize("env_id", sorted(ENV_IDS))
def test_check_env_passes(env_id):
    env = gym.make(env_id, contexts=4, actions=3, seed=0).unwrapped
    check_env(env, skip_render_check=True)


@pytest.mark.parametrize("env_id", sorted(k for k in ENV_IDS if "Dueling" not in k))  # dueling: test_preferences_problems
def test_env_is_a_one_step_bandit_with_the_problem_rewards(env_id):
    env = gym.make(env_id, contexts=4, actions=3, seed=1).unwrapped
    p = env.problem
    counts = np.zeros(4)
    for i in range(2000):
        obs, info = env.reset(seed=i)
        x = info["context"]
        counts[x] += 1
        if env_id.endswith("LinearBandit-v0"):
            np.testing.assert_array_equal(obs, p.features[x])
        else:
            assert obs == x
        y = i % 3
        _, r, terminated, truncated, _ = env.step(y)
        assert terminated and not truncated and r == p.rewards[x, y]
    # contexts ~ rho: chi-square goodness of fit at the 0.001 level
    from scipy.stats import chisquare
    assert chisquare(counts, 2000 * p.rho).pvalue > 1e-3


def test_env_reward_noise_has_the_stated_sd():
    env = gym.make("testbed/TabularBandit-v0", contexts=1, actions=2, seed=0, noise_std=0.5).unwrapped
    env.reset(seed=0)
    r = np.array([env.step(0)[1] for _ in range(4000)])
    mean = env.problem.rewards[0, 0]
    # 99.9% intervals: mean within 3.3 sd/sqrt(n), sd within 10%
    assert abs(r.mean() - mean) < 3.3 * 0.5 / np.sqrt(4000)
    assert abs(r.std() - 0.5) < 0.05
