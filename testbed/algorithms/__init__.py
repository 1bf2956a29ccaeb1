"""Algorithms: update rules over the shared problems, policies and losses."""

from testbed.algorithms.base import Algorithm, Step, build_config, check_pairing
from testbed.algorithms.npg import NPG, NPGConfig
from testbed.algorithms.preference import PREFERENCE_ALGORITHMS
from testbed.algorithms.rebel import REBEL, REBELConfig

ALGORITHMS: dict[str, type[Algorithm]] = {"rebel": REBEL, "npg": NPG, **PREFERENCE_ALGORITHMS}

__all__ = ["ALGORITHMS", "NPG", "NPGConfig", "PREFERENCE_ALGORITHMS", "REBEL", "REBELConfig", "Algorithm", "Step",
           "build_config", "check_pairing"]
