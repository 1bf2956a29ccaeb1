"""The one metrics schema (DESIGN.md §4), and the exact bandit metrics.

Metrics are functions of (problem, policy): they never live inside a training loop. Values a run
does not have (the loss of NPG, samples in exact mode, exploitability on a reward problem, reward
and suboptimality on a preference problem) are left empty in the CSV, never invented.

On a preference problem ``exploitability`` is expl(pi_t) of the last iterate and
``exploitability_avg`` is expl(pi_bar_t) of the average iterate pi_bar_t = (1/t)·sum_{s<t} pi_s (in
probability space, per context): the iterates pi_0 … pi_{t−1} whose win rates produced pi_1 … pi_t.
For self-play Hedge, expl(pi_bar_t) = Regret_t/t exactly (derived: P(pi_s ≻ pi_s) = ½), so it
obeys the regret bound (L/eta + eta·t/8)/t, L = E_x max_y ln(1/pi_0) (ln K for uniform pi_0), of
:func:`hedge_regret_bound`; it is empty at t = 0.
"""

from __future__ import annotations

import numpy as np

from testbed.policies import Policy
from testbed.problems import PreferenceBandit, TabularBandit
from testbed.problems.bandit import regularised_gap
from testbed.problems.exact import kl_per_context
from testbed.results import COLUMNS, EXTRAS  # noqa: F401  (the schema lives with the run folder)


def problem_metrics(problem, policy: Policy, beta: float = 0.0,
                    avg_probs: np.ndarray | None = None, target=None) -> dict[str, float | None]:
    """The exact metrics of ``policy`` on ``problem``: dispatches on reward vs preference problems.
    ``target``: the algorithm's ``kl_target`` declaration (used instead of ``beta`` when given)."""
    if isinstance(problem, PreferenceBandit):
        return preference_metrics(problem, policy, avg_probs)
    return bandit_metrics(problem, policy, beta, target) | {"exploitability": None, "exploitability_avg": None}


def preference_metrics(problem: PreferenceBandit, policy: Policy,
                       avg_probs: np.ndarray | None = None) -> dict[str, float | None]:
    """expl(pi_t), expl(pi_bar_t) (None without an average) and E_x KL(pi_t || pi_ref); no reward exists."""
    return {k: None if v is None else float(v)
            for k, v in preference_metric_arrays(problem, policy.log_probs(), avg_probs).items()}


def preference_metric_arrays(problem: PreferenceBandit, log_pi: np.ndarray,
                             avg_probs: np.ndarray | None = None) -> dict[str, np.ndarray | None]:
    """:func:`preference_metrics` over the last axes: for a stack of problems
    (:class:`~testbed.problems.PreferenceBatch`) and policies (log_pi [S, X, Y]) one value per member,
    bit for bit its unstacked value."""
    pi = np.exp(log_pi)
    return {"reward": None, "suboptimality": None, "kl_ref": problem.kl_ref(pi, log_pi), "kl_reg_gap": None,
            "exploitability": problem.exploitability(pi),
            "exploitability_avg": None if avg_probs is None else problem.exploitability(avg_probs)}


def stack_metric_arrays(problem, log_pi: np.ndarray, avg_probs: np.ndarray | None = None,
                        target=None) -> dict[str, np.ndarray | None]:
    """Every metric column of a stack of runs (log_pi [S, X, Y]) on a stack of reward or preference problems:
    :func:`problem_metrics` member by member, in one array computation."""
    if isinstance(problem, PreferenceBandit):
        return preference_metric_arrays(problem, log_pi, avg_probs)
    return bandit_metric_arrays(problem, log_pi, 0.0, target) | {"exploitability": None, "exploitability_avg": None}


def hedge_regret_bound(problem: PreferenceBandit, pi0: Policy, eta: float, T):
    """(L/eta + eta·T/8)/T with L = E_x max_y ln(1/pi_0(y|x)) (= ln K for uniform pi_0).

    Hedge with gains in [0, 1] has Regret_T ≤ ln(1/pi_0(y*))/eta + eta·T/8 against any fixed y*
    (Freund & Schapire 1999; Hoeffding's lemma), and expl(pi_bar_T) = Regret_T/T in self-play
    (testbed/THEORY.md §E), per context; averaging over x ~ rho gives the bound. ``T`` may be an array.
    """
    L = float(problem.rho @ np.max(-pi0.log_probs(), axis=1))
    T = np.asarray(T, dtype=np.float64)
    return (L / eta + eta * T / 8) / T


def bandit_metrics(problem: TabularBandit, policy: Policy, beta: float = 0.0, target=None) -> dict[str, float | None]:
    """Exact J(pi_t), J* - J(pi_t), E_x KL(pi_t || pi_ref) and ``kl_reg_gap``.

    ``kl_reg_gap`` is c·E_x KL(pi_t || pi_target) for the algorithm's declared target
    ``target`` = (c, ln pi_target) (:meth:`testbed.algorithms.Algorithm.kl_target`), 0 at its exact optimum:
    - reward algorithms with KL shaping (REBEL, NPG, PPO with beta > 0): c = beta, pi_target = pi*_beta,
      so it is J_beta(pi*_beta) - J_beta(pi_t);
    - DPO with Bradley–Terry labels of temperature s: c = beta·s, pi_target = pi*_{beta·s} (the KL
      coefficient its loss implies), i.e. J_{beta·s}(pi*_{beta·s}) - J_{beta·s}(pi_t);
    - IPO: c = tau, pi_target = the exact minimiser of its population loss under its pair law;
    - empty where there is no such target (beta = 0, DPO with deterministic or tensor labels, DPO
      on a given data set).
    Without ``target``: c = ``beta`` > 0 and pi*_beta, as for the reward algorithms."""
    return {k: None if v is None else float(v)
            for k, v in bandit_metric_arrays(problem, policy.log_probs(), beta, target).items()}


def bandit_metric_arrays(problem: TabularBandit, log_pi: np.ndarray, beta: float = 0.0,
                         target=None) -> dict[str, np.ndarray | None]:
    """:func:`bandit_metrics` over the last axes: for a :class:`~testbed.problems.ProblemBatch` and a
    stack of policies (log_pi [S, X, Y]) one value per member. Every sum runs over the last axis of a
    contiguous array, so member s gets bit-for-bit the value of the unstacked call."""
    if target is None and beta > 0:
        target = (beta, problem.regularised_optimum_log(beta))
    pi = np.exp(log_pi)

    def expect(per_context: np.ndarray) -> np.ndarray:  # E_x under rho
        return np.sum(problem.rho * per_context, axis=-1)

    def kl(log_q: np.ndarray) -> np.ndarray:  # log-space: exact for near-deterministic policies; >= 0
        return expect(kl_per_context(pi, log_pi, log_q))

    reward = expect(np.sum(pi * problem.rewards, axis=-1))
    # J* − J as E_x sum_y pi(y|x)·(max r(x) − r(x, y)): a sum of terms >= 0, exact to rounding near the optimum (the
    # difference J* − J of two near-equal numbers has error ~eps·|J*|: it logged 0 for gaps of 1e-19 and went negative)
    regret = problem.rewards.max(axis=-1, keepdims=True) - problem.rewards
    return {"reward": reward, "suboptimality": expect(np.sum(pi * regret, axis=-1)),
            "kl_ref": kl(problem.log_pi_ref),
            "kl_reg_gap": None if target is None else expect(regularised_gap(pi, log_pi, problem.rewards,
                                                                            problem.log_pi_ref, *target))}


def mirror_descent_bound(problem: TabularBandit, pi0: Policy, eta: float, T):
    """Agarwal et al. (2021) Thm 16 (gamma = 0), refined form from its proof:

        J* - J(pi_T) <= KL(pi* || pi_0)/(eta·T) + (J* - J(pi_0))/T

    which is at most log|Y|/(eta·T) + 1/T for rewards in [0, 1] and uniform pi_0. Holds for the
    exact tabular REBEL/NPG update without KL regularisation. ``T`` may be an array (T >= 1).
    """
    kl = float(problem.rho @ kl_per_context(problem.optimal_policy(), None, pi0.log_probs()))
    gap0 = problem.optimal_value() - problem.value(pi0.probs())
    T = np.asarray(T, dtype=np.float64)
    return kl / (eta * T) + gap0 / T
