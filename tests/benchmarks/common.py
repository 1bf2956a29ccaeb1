"""Shared workloads of the benchmarks (pytest-benchmark tests and the ratio script)."""

import numpy as np

from testbed.algorithms import REBEL, build_config
from testbed.policies import TabularSoftmax
from testbed.problems import TabularBandit

SIZE = 1000
ETA = 1.0


def exact_workload(size: int = SIZE):
    rng = np.random.default_rng(0)
    problem = TabularBandit(rng.random((size, size)))
    policy = TabularSoftmax(rng.normal(size=(size, size)))
    algo = REBEL(build_config(REBEL.Config, {"eta": ETA}, "bench"), problem, rng)
    return problem, policy, algo


def bare_numpy_step(logits: np.ndarray, r: np.ndarray, eta: float = ETA) -> np.ndarray:
    """The lower bound: logits + eta·r followed by a log-softmax over the same array, in bare numpy."""
    z = logits + eta * r
    z -= z.max(axis=1, keepdims=True)
    z -= np.log(np.exp(z).sum(axis=1, keepdims=True))
    return z


def rebel_step(policy, algo):
    return algo.update(policy, None).policy
