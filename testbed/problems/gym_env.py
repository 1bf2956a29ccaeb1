"""Bandits as one-step ``gymnasium`` environments (observation = context, action = response).

    >>> import gymnasium as gym, testbed
    >>> env = gym.make("testbed/TabularBandit-v0", family="needle", contexts=5, actions=8)

Each ``reset`` draws x ~ rho; ``step(y)`` returns the (noisy) reward r(x, y) and ends the episode.
The tabular env observes the context index; the linear env observes the context's feature
matrix phi[x] (shape [Y, d]), which is what a linear learner sees.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from testbed.problems.bandit import LinearBandit, TabularBandit
from testbed.problems.families import make_linear, make_tabular


class BanditEnv(gym.Env):
    metadata = {"render_modes": []}

    def __init__(self, problem: TabularBandit):
        self.problem = problem
        self.action_space = spaces.Discrete(problem.num_actions)
        self.observation_space = self._observation_space()
        self._x = 0

    def _observation_space(self) -> spaces.Space:
        return spaces.Discrete(self.problem.num_contexts)

    def _obs(self):
        return self._x

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self._x = int(self.problem.sample_contexts(self.np_random, 1)[0])
        return self._obs(), {"context": self._x}

    def step(self, action):
        y = int(action)
        if not self.action_space.contains(y):
            raise ValueError(f"action must be an integer in [0, {self.problem.num_actions}) (got {action!r})")
        r = float(self.problem.sample_rewards(self.np_random, np.array([self._x]), np.array([y]))[0])
        return self._obs(), r, True, False, {"context": self._x, "mean_reward": float(self.problem.rewards[self._x, y])}


class TabularBanditEnv(BanditEnv):
    def __init__(self, problem: TabularBandit | None = None, **family_kwargs):
        super().__init__(problem if problem is not None else make_tabular(**family_kwargs))


class LinearBanditEnv(BanditEnv):
    def __init__(self, problem: LinearBandit | None = None, **family_kwargs):
        super().__init__(problem if problem is not None else make_linear(**family_kwargs))

    def _observation_space(self) -> spaces.Space:
        phi = self.problem.features
        return spaces.Box(low=float(phi.min()), high=float(phi.max()), shape=phi.shape[1:], dtype=np.float64)

    def _obs(self):
        return self.problem.features[self._x].copy()


ENV_IDS = {"testbed/TabularBandit-v0": TabularBanditEnv, "testbed/LinearBandit-v0": LinearBanditEnv}


def register_envs() -> None:
    for env_id, cls in ENV_IDS.items():
        if env_id not in gym.registry:
            gym.register(id=env_id, entry_point=f"{cls.__module__}:{cls.__name__}")
