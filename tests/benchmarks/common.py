"""Shared workloads of the benchmarks (pytest-benchmark tests and the ratio script)."""

import numpy as np

from testbed.algorithms import ALGORITHMS, NPG, REBEL, build_config
from testbed.experiments.spec import RunPlan
from testbed.policies import MLPPolicy, TabularSoftmax, mlp_features
from testbed.problems import TabularBandit, make_tabular

SIZE = 1000
ETA = 1.0


def exact_workload(size: int = SIZE, algorithm: str = "rebel"):
    """An exact tabular iteration at |X| = |Y| = size: (problem, policy, algorithm)."""
    rng = np.random.default_rng(0)
    problem = TabularBandit(rng.random((size, size)))
    policy = TabularSoftmax(rng.normal(size=(size, size)))
    cls = REBEL if algorithm == "rebel" else NPG
    return problem, policy, cls(build_config(cls.Config, {"eta": ETA}, "bench"), problem, rng)


def bare_numpy_step(logits: np.ndarray, r: np.ndarray, eta: float = ETA) -> np.ndarray:
    """The lower bound: logits + eta·r followed by a log-softmax over the same array, in bare numpy."""
    z = logits + eta * r
    z -= z.max(axis=1, keepdims=True)
    z -= np.log(np.exp(z).sum(axis=1, keepdims=True))
    return z


def exact_step(policy, algo):
    return algo.update(policy, None).policy


def seed_plans(seeds: int, iterations: int, eval_every: int = 100):
    """``seeds`` runs of exact tabular REBEL (eta = 1) on one 10 x 10 instance: the batched-vs-loop workload."""
    problem = make_tabular(contexts=10, actions=10, seed=0)
    plans = [RunPlan(f"s{s}", problem.name, "rebel", "rebel", "rebel", {"mode": "exact", "eta": 1.0}, {}, None, s,
                     iterations, eval_every) for s in range(seeds)]
    return plans, [problem] * seeds


SAMPLED = {  # equal samples per iteration: 500 responses, 4 epochs of minibatch-64 Adam for each
    "rebel": {"mode": "sampled", "solver": "adam", "pairs": 250, "epochs": 4, "minibatch": 64, "lr": 0.05},
    "ppo": {"batch": 500, "epochs": 4, "minibatch": 64, "lr": 0.05},
    "dpo": {"mode": "online", "pairs": 250, "epochs": 4, "minibatch": 64, "lr": 0.05, "beta": 0.1},
}


def sampled_workload(name: str, seed: int = 0):
    """One sampled iteration's inputs on the MLP policy (hidden [32]) over the default 20 x 10 problem."""
    problem = make_tabular(contexts=20, actions=10, seed=0)
    rng = np.random.default_rng(seed)
    cls = ALGORITHMS[name]
    algo = cls(build_config(cls.Config, dict(SAMPLED[name]), name), problem, rng)
    policy = MLPPolicy(mlp_features(problem), (32,), rng=np.random.default_rng(seed))
    return policy, algo, rng
