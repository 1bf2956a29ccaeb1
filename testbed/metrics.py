"""The one metrics schema (DESIGN.md §4), and the exact bandit metrics.

Metrics are functions of (problem, policy): they never live inside a training loop. Values a run
does not have (the loss of NPG, samples in exact mode, exploitability on a reward problem) are
left empty in the CSV, never invented.
"""

from __future__ import annotations

import numpy as np
from scipy.special import rel_entr

from testbed.policies import Policy
from testbed.problems import TabularBandit

COLUMNS = ("run_id", "problem", "algorithm", "seed", "iteration", "samples", "queries", "reward", "suboptimality",
           "kl_ref", "kl_reg_gap", "exploitability", "loss", "wall_time", "clipfrac", "approx_kl", "ratio_max", "value_loss")
"""``samples``: responses drawn so far; ``queries``: reward or preference oracle calls so far (both empty
in exact/population mode); the last four are PPO's diagnostics (empty for other algorithms)."""
EXTRAS = ("clipfrac", "approx_kl", "ratio_max", "value_loss")


def bandit_metrics(problem: TabularBandit, policy: Policy, beta: float = 0.0) -> dict[str, float | None]:
    """Exact J(pi_t), J* - J(pi_t), E_x KL(pi_t || pi_ref) and, for beta > 0, J_beta(pi*_beta) - J_beta(pi_t)."""
    log_pi = policy.log_probs()
    pi = policy.probs()
    reward = problem.value(pi)
    return {
        "reward": reward,
        "suboptimality": problem.optimal_value() - reward,
        "kl_ref": problem.kl_ref(pi, log_pi),
        "kl_reg_gap": problem.kl_reg_gap(pi, beta, log_pi) if beta > 0 else None,
    }


def mirror_descent_bound(problem: TabularBandit, pi0: Policy, eta: float, T):
    """Agarwal et al. (2021) Thm 16 (gamma = 0), refined form from its proof:

        J* - J(pi_T) <= KL(pi* || pi_0)/(eta·T) + (J* - J(pi_0))/T

    which is at most log|Y|/(eta·T) + 1/T for rewards in [0, 1] and uniform pi_0. Holds for the
    exact tabular REBEL/NPG update without KL regularisation. ``T`` may be an array (T >= 1).
    """
    kl = float(problem.rho @ rel_entr(problem.optimal_policy(), pi0.probs()).sum(axis=1))
    gap0 = problem.optimal_value() - problem.value(pi0.probs())
    T = np.asarray(T, dtype=np.float64)
    return kl / (eta * T) + gap0 / T
