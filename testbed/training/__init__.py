"""Training: the one loop every track and the conformance harness run (collect → update → row → checkpoint)."""

from testbed.training.loop import NumericalError, check_finite, torch_threads, train

__all__ = ["NumericalError", "check_finite", "torch_threads", "train"]
