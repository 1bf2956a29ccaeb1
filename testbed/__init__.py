"""rebel-testbed: REBEL, NPG and friends on contextual bandits with exact ground truth.

Layout follows the one loop of DESIGN.md §1: ``problems`` → ``policies`` → ``algorithms`` (which use
the pure ``losses``) → ``metrics`` → ``experiments`` (specs, runner) → ``plotting``; ``cli`` wires
them to the ``testbed`` command. Importing the package registers the gymnasium environments.
"""

__version__ = "0.1.0"

from testbed import problems  # noqa: E402,F401  (registers the gymnasium environments)


def load(path):
    """A run folder (bandit or LM) as a pandas DataFrame: metrics.csv joined with runs.csv (each run's
    hyper-parameters as columns). See :func:`testbed.results_load.load`."""
    from testbed.results_load import load as _load

    return _load(path)
