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


def run(spec, out=None, *, overrides=(), overwrite: bool = False, progress: bool = False, jobs: int = 1):
    """Run a spec — a dict written like a spec file, or the path of one — into the run folder ``out`` (default:
    a fresh temporary folder) and return its path; ``overrides``: ``key=value`` strings as on the command line.
    A spec with a ``model`` is an LM spec (``testbed llm run``), else a bandit spec (``testbed run``).
    Bad input raises :class:`testbed.errors.InputError` naming the field, before any work."""
    import tempfile
    from pathlib import Path

    from testbed.errors import InputError
    from testbed.experiments.overrides import apply_overrides
    from testbed.experiments.spec import spec_file
    from testbed.io import read_yaml

    if isinstance(spec, (str, Path)):
        path = spec_file(spec)
        data, source, base = read_yaml(path, "spec"), str(path), path.parent
    elif isinstance(spec, dict):
        data, source, base = spec, "spec", Path.cwd()
    else:
        raise InputError(f"testbed.run: spec must be a dict or a path to a spec file (got {type(spec).__name__})")
    if isinstance(data, dict) and "model" in data:
        from testbed.llm.spec import parse_lm_spec
        from testbed.llm.train import prepare_lm_out, run_lm_spec

        lm = parse_lm_spec(apply_overrides(data, overrides, set(data) | {"train"}), source)
        out = Path(out) if out is not None else Path(tempfile.mkdtemp(prefix="testbed-")) / lm.name
        prepare_lm_out(out, overwrite)
        return Path(run_lm_spec(lm, out, overwrite=overwrite, progress=progress))
    from testbed.experiments.runner import prepare_out, run_spec
    from testbed.experiments.spec import TOP_KEYS, parse_spec

    parsed = parse_spec(apply_overrides(data, overrides, TOP_KEYS) if overrides else data, source, base)
    out = Path(out) if out is not None else Path(tempfile.mkdtemp(prefix="testbed-")) / parsed.name
    prepare_out(out, overwrite)
    return Path(run_spec(parsed, out, overwrite=overwrite, progress=progress, jobs=jobs))
