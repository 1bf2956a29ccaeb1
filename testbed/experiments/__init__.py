"""Experiments: specs (data) → runs → run folders → figures."""

from testbed.experiments.runner import read_metrics, run_one, run_spec
from testbed.experiments.spec import RunPlan, Spec, load_spec, parse_spec

__all__ = ["RunPlan", "Spec", "load_spec", "parse_spec", "read_metrics", "run_one", "run_spec"]
