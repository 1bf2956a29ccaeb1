import numpy as np
import pytest

from testbed.algorithms import ALGORITHMS, build_config


def make_algo(name: str, problem, rng=None, **params):
    cls = ALGORITHMS[name]
    return cls(build_config(cls.Config, params, name), problem, rng or np.random.default_rng(0))


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


def pytest_configure(config):
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("MPLBACKEND", "Agg")
