"""Training: the one loop every track and the conformance harness run (collect → update → row → checkpoint)."""

from testbed.training.loop import NumericalError, train

__all__ = ["NumericalError", "train"]
