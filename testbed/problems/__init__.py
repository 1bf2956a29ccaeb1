"""Problems: contextual bandits with exact ground truth, their families, files and gym envs."""

from testbed.problems.bandit import LinearBandit, TabularBandit, load_problem
from testbed.problems.families import FAMILIES, make_linear, make_tabular
from testbed.problems.gym_env import ENV_IDS, register_envs

register_envs()

__all__ = ["ENV_IDS", "FAMILIES", "LinearBandit", "TabularBandit", "load_problem", "make_linear", "make_tabular"]
