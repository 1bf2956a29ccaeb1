"""Problems: contextual (reward and preference) bandits with exact ground truth, families, files, gym envs."""

from testbed.problems.bandit import LinearBandit, ProblemBatch, TabularBandit, load_problem
from testbed.problems.families import FAMILIES, make_linear, make_tabular
from testbed.problems.gym_env import ENV_IDS, register_envs
from testbed.problems.preference import (
    PREFERENCE_FAMILIES,
    PreferenceBandit,
    bradley_terry_fit,
    make_preference,
    minimax_winner,
)
from testbed.problems.preference_batch import PreferenceBatch, problem_batch

register_envs()

__all__ = ["ENV_IDS", "FAMILIES", "PREFERENCE_FAMILIES", "LinearBandit", "PreferenceBandit", "PreferenceBatch", "ProblemBatch",
           "TabularBandit", "problem_batch",
           "bradley_terry_fit", "load_problem", "make_linear", "make_preference", "make_tabular", "minimax_winner"]
