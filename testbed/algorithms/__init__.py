"""Algorithms: update rules over the shared problems, policies and losses."""

from testbed.algorithms.base import Algorithm, Step, build_config
from testbed.algorithms.npg import NPG, NPGConfig
from testbed.algorithms.rebel import REBEL, REBELConfig

ALGORITHMS: dict[str, type[Algorithm]] = {"rebel": REBEL, "npg": NPG}

__all__ = ["ALGORITHMS", "NPG", "NPGConfig", "REBEL", "REBELConfig", "Algorithm", "Step", "build_config"]
