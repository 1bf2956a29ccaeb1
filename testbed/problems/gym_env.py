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
from testbed.problems.preference import PreferenceBandit, make_preference


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


class DuelingBanditEnv(gym.Env):
    """One-step dueling bandit: observe x ~ rho, act with a pair (y, y'), get reward 1 if y ≻ y' else 0.

    The outcome is a Bernoulli(P(y ≻ y' | x)) draw, the preference oracle of a
    :class:`PreferenceBandit`; ``info`` carries the context and the exact P(y ≻ y' | x).
    """

    metadata = {"render_modes": []}

    def __init__(self, problem: PreferenceBandit | None = None, **family_kwargs):
        self.problem = problem if problem is not None else make_preference(**family_kwargs)
        Y = self.problem.num_actions
        self.action_space = spaces.MultiDiscrete([Y, Y])
        self.observation_space = spaces.Discrete(self.problem.num_contexts)
        self._x = 0

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self._x = int(self.problem.sample_contexts(self.np_random, 1)[0])
        return self._x, {"context": self._x}

    def step(self, action):
        a = np.asarray(action)
        if a.shape != (2,) or not self.action_space.contains(a.astype(np.int64)):
            raise ValueError(f"action must be a pair (y, y') of integers in [0, {self.problem.num_actions}) (got {action!r})")
        y, y2 = int(a[0]), int(a[1])
        won = float(self.problem.sample_preferences(self.np_random, np.array([self._x]), np.array([y]), np.array([y2]))[0])
        return self._x, won, True, False, {"context": self._x,
                                           "preference": float(self.problem.preferences[self._x, y, y2])}


ENV_IDS = {"testbed/TabularBandit-v0": TabularBanditEnv, "testbed/LinearBandit-v0": LinearBanditEnv,
           "testbed/DuelingBandit-v0": DuelingBanditEnv}


def register_envs() -> None:
    for env_id, cls in ENV_IDS.items():
        if env_id not in gym.registry:
            gym.register(id=env_id, entry_point=f"{cls.__module__}:{cls.__name__}")
