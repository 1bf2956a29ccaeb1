"""Theory data a run folder carries for its figures: the bound each run's curves are drawn against, the
exact reward-vs-KL frontier of a reward problem, and the exact facts of a preference problem."""

from __future__ import annotations

import numpy as np

from testbed.algorithms import ALGORITHMS, build_config
from testbed.experiments.spec import RunPlan
from testbed.metrics import hedge_regret_bound, mirror_descent_bound
from testbed.policies import TabularSoftmax, initial_policy
from testbed.problems import PreferenceBandit, TabularBandit, bradley_terry_fit


def theory(plan: RunPlan, problem: TabularBandit | PreferenceBandit) -> dict | None:
    """Bound data for the plot.

    Reward problems: the mirror-descent bound holds for exact tabular updates, beta = 0.
    Preference problems: the Hedge regret bound on expl(pi_bar_T) holds for exact Hedge and for
    exact REBEL-preference with y' ~ pi_t (the same update, testbed/THEORY.md §E); Nash-MD with the
    decreasing schedule has KL(pi*_tau || pi_T) ≤ 8/(tau²(T+1)).
    """
    pi0 = initial_policy(problem, **(plan.policy or {}))
    cls = ALGORITHMS[plan.algorithm]
    cfg = build_config(cls.Config, plan.config, plan.label)
    kind = cls.bound(cfg)  # the algorithm's declaration, never its name
    if kind == "hedge_regret" and isinstance(problem, PreferenceBandit):
        L = float(hedge_regret_bound(problem, pi0, 1.0, 1.0)) - 1 / 8
        return {"bound": "hedge_regret", "eta": cfg.eta, "log_inv_pi0": L}
    if kind == "nash_md_kl" and isinstance(problem, PreferenceBandit):
        return {"bound": "nash_md_kl", "tau": cfg.tau}
    if kind != "mirror_descent" or isinstance(problem, PreferenceBandit) or not isinstance(pi0, TabularSoftmax):
        return None
    eta = cfg.eta
    b1 = float(mirror_descent_bound(problem, pi0, eta, 1.0))
    gap0 = problem.optimal_value() - problem.value(pi0.probs())
    return {"bound": "mirror_descent", "eta": eta, "kl_star_init_over_eta": b1 - gap0, "gap0": gap0}


FRONTIER_BETAS = np.logspace(-3, 1, 41)


def kl_frontier(problem: TabularBandit, betas: np.ndarray = FRONTIER_BETAS) -> dict:
    """The exact reward-vs-KL frontier: (KL(pi*_beta || pi_ref), J(pi*_beta)) for a grid of beta. No
    policy has more reward at the same KL (pi*_beta maximises J - beta·KL)."""
    kl, reward = [], []
    for b in betas:
        lp = problem.regularised_optimum_log(b)
        kl.append(problem.kl_ref(np.exp(lp), lp))
        reward.append(problem.value(np.exp(lp)))
    return {"beta": [float(b) for b in betas], "kl": kl, "reward": reward}


def problem_theory(problem) -> dict | None:
    """Exact facts about a preference problem, for plots: minimax winner, BT rewards, Condorcet winners."""
    if not isinstance(problem, PreferenceBandit):
        return None
    return {"minimax_winner": problem.minimax_winner().tolist(),
            "bt_rewards": bradley_terry_fit(problem.preferences,
                                            pair_weights=problem.pi_ref[:, :, None] * problem.pi_ref[:, None, :]).tolist(),
            "condorcet_winner": problem.condorcet_winners()}
