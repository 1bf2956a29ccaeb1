"""rebel-testbed: REBEL, NPG and friends on contextual bandits with exact ground truth.

Layout follows the one loop of DESIGN.md §1: ``problems`` → ``policies`` → ``algorithms`` (which use
the pure ``losses``) → ``metrics`` → ``experiments`` (specs, runner) → ``plotting``; ``cli`` wires
them to the ``testbed`` command. Importing the package registers the gymnasium environments.
"""

__version__ = "0.1.0"

from testbed import problems  # noqa: E402,F401  (registers the gymnasium environments)
