"""Preference problems (issue 4, part 1): validation, generators from their definitions, files, gym env."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from testbed.errors import InputError
from testbed.problems import PreferenceBandit, load_problem, make_preference
from testbed.problems.preference import (
    bradley_terry,
    cyclic_raters,
    dice_preferences,
    nlhf_example,
    random_skew,
    ranking_preferences,
    rock_paper_scissors,
)

RPS = rock_paper_scissors()[0]


@pytest.mark.parametrize(("P", "expect"), [
    (np.array([[[0.5, 0.7], [0.7, 0.5]]]), ("preferences", "P + Pᵀ = 1")),
    (np.array([[[0.5, 1.2], [-0.2, 0.5]]]), ("preferences", "[0, 1]")),
    (np.array([[[0.4, 0.5], [0.5, 0.6]]]), ("preferences", "diagonal")),
    (np.full((1, 2, 3), 0.5), ("preferences", "shape [X, Y, Y]")),
    (np.full((2, 2), 0.5), ("preferences", "3-d")),
    (np.array([[[0.5, np.nan], [0.5, 0.5]]]), ("preferences", "finite")),
])
def test_invalid_preference_tensors_are_rejected_with_one_line(P, expect):
    with pytest.raises(InputError) as e:
        PreferenceBandit(P)
    msg = str(e.value)
    assert "\n" not in msg
    for s in expect:
        assert s in msg, msg


def test_rock_paper_scissors_and_bradley_terry_definitions():
    # paper beats rock, rock beats scissors, scissors beats paper, deterministically
    assert RPS[1, 0] == 1 and RPS[0, 2] == 1 and RPS[2, 1] == 1 and np.all(np.diag(RPS) == 0.5)
    r = np.array([[0.0, 1.0, 3.0]])
    P = bradley_terry(r, temperature=2.0)[0]
    assert P[2, 0] == pytest.approx(1 / (1 + np.exp(-1.5)), abs=1e-15)
    np.testing.assert_allclose(P + P.T, 1.0, atol=1e-15)


def test_intransitive_dice_each_beat_the_next_with_probability_5_over_9():
    P = dice_preferences()[0]
    for i in range(3):
        assert P[i, (i + 1) % 3] == pytest.approx(5 / 9, abs=1e-15)  # A ≻ B ≻ C ≻ A
    # ties count half: a die against itself with a repeated face
    assert dice_preferences(((1, 2), (2, 3)))[0, 0, 1] == pytest.approx(0.5 * 1 / 4, abs=1e-15)  # one tie in 4
    Q = dice_preferences(((1, 2), (1, 2)))[0]
    np.testing.assert_allclose(Q, 0.5, atol=1e-15)


@pytest.mark.parametrize("eps", [-0.25, -0.1, 0.0, 0.1, 0.25])
def test_nlhf_example_from_rater_fractions(eps):
    P = nlhf_example(eps)[0]
    f1, f2, f3 = 1 / 3 - eps, 1 / 3 + eps / 2, 1 / 3 + eps / 2
    # each pair has one strict rater type, the others tie (1/2)
    assert P[1, 0] == pytest.approx(f1 + 0.5 * (f2 + f3), abs=1e-15)
    assert P[0, 2] == pytest.approx(f2 + 0.5 * (f1 + f3), abs=1e-15)
    assert P[2, 1] == pytest.approx(f3 + 0.5 * (f1 + f2), abs=1e-15)


def test_transitive_raters_aggregate_to_an_intransitive_cycle():
    for Y in (3, 4, 5):
        for k in range(Y):
            R = ranking_preferences([(k + i) % Y for i in range(Y)], Y)
            # a ranking is transitive: a ≻ b and b ≻ c imply a ≻ c
            for a, b, c in np.ndindex(Y, Y, Y):
                if R[a, b] == 1 and R[b, c] == 1:
                    assert R[a, c] == 1
        P = cyclic_raters(Y)[0]
        for y in range(Y):
            assert P[y, (y + 1) % Y] == pytest.approx((Y - 1) / Y, abs=1e-15)
        assert PreferenceBandit(P[None]).condorcet_winners() == [None]


def test_random_skew_is_valid_and_families_build():
    P = random_skew(4, 5, np.random.default_rng(0))
    PreferenceBandit(P)
    for fam in ("rps", "dice", "nlhf", "cyclic_raters", "raters", "skew", "bt"):
        p = make_preference(fam, contexts=2, actions=3, seed=1)
        assert p.preferences.shape == (2, 3, 3)
    with pytest.raises(InputError, match="problem.eps"):
        make_preference("nlhf", eps=0.4)
    with pytest.raises(InputError, match="actions must be 3"):
        make_preference("dice", actions=4)


def test_save_load_round_trip(tmp_path):
    p = make_preference("skew", contexts=3, actions=4, seed=2, pi_ref=[0.1, 0.2, 0.3, 0.4])
    p.save(tmp_path / "p.npz")
    q = load_problem(tmp_path / "p.npz")
    assert isinstance(q, PreferenceBandit) and q.name == p.name
    np.testing.assert_array_equal(q.preferences, p.preferences)
    np.testing.assert_array_equal(q.pi_ref, p.pi_ref)
    np.savez(tmp_path / "bad.npz", preferences=p.preferences, rewards=np.zeros((3, 4)))
    with pytest.raises(InputError, match="preferences"):
        load_problem(tmp_path / "bad.npz")


def test_dueling_env_passes_check_env_and_samples_the_preference():
    env = gym.make("testbed/DuelingBandit-v0", family="dice")
    check_env(env.unwrapped)
    env.reset(seed=0)
    wins = []
    for _ in range(4000):
        env.reset()
        _, r, term, trunc, info = env.step(np.array([0, 1]))
        assert term and not trunc and info["preference"] == pytest.approx(5 / 9)
        wins.append(r)
    # 4000 Bernoulli(5/9) draws: sd 0.0079; 4 sd
    assert abs(np.mean(wins) - 5 / 9) < 0.032


def test_rounding_outside_0_1_is_clipped_and_a_real_violation_names_its_entry():
    """Issue 17 item 9: a rater mixture summing to 1 + 2e-16 was refused as "got values in [0, 1]".
    Entries within the one tolerance ATOL = 1e-9 of [0, 1] are clipped into it (every preference-tensor
    check, DPO's tensor labels included); beyond it the message names the entry and its exact value."""
    import numpy as np

    from testbed.datasets import PreferenceOracle
    from testbed.problems import TabularBandit
    from testbed.problems.preference import check_preferences

    p = make_preference("raters", contexts=3, actions=4, seed=1)
    assert 0.0 <= p.preferences.min() and p.preferences.max() <= 1.0
    P = np.full((1, 2, 2), 0.5)
    P[0, 0, 1], P[0, 1, 0] = 1.0 + 2e-16, -2e-16
    assert check_preferences(P).max() == 1.0
    P[0, 0, 1], P[0, 1, 0] = 1.0 + 1e-6, -1e-7
    with pytest.raises(InputError, match=r"P\[0, 0, 1\] = 1\.000001"):
        check_preferences(P)
    with pytest.raises(InputError, match=r"preferences must be probabilities in \[0, 1\] \(got P\[0, 0, 1\]"):
        PreferenceOracle(TabularBandit(np.zeros((1, 2))), labels="tensor", preferences=P)
