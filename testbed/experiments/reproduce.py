"""``testbed reproduce``: run every spec in experiments/ and draw its figure into figures/."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from testbed.errors import InputError
from testbed.experiments.runner import run_spec
from testbed.experiments.spec import load_spec
from testbed.plotting import plot_run


def reproduce(experiments: str | Path = "experiments", figures: str | Path = "figures",
              runs: str | Path = "runs", only: list[str] | None = None, progress: bool = True) -> list[Path]:
    experiments, figures, runs = Path(experiments), Path(figures), Path(runs)
    if not experiments.is_dir():
        raise InputError(f"--experiments {str(experiments)!r} is not a folder of spec files (run from the repository root)")
    paths = sorted(p for p in experiments.iterdir() if p.suffix in (".yaml", ".yml"))
    specs = [load_spec(p) for p in paths]  # validate all before running any
    if only:
        unknown = sorted(set(only) - {s.name for s in specs})
        if unknown:
            raise InputError(f"--only: unknown spec name(s) {unknown}; known: {sorted(s.name for s in specs)}")
        specs = [s for s in specs if s.name in only]
    if not specs:
        raise InputError(f"no spec files (*.yaml) in {str(experiments)!r}")
    written = []
    for spec in specs:
        t0 = time.perf_counter()
        run_dir = run_spec(spec, runs / spec.name, overwrite=True, progress=progress)
        fig = plot_run(run_dir, figures / f"{spec.name}.png")
        print(f"{spec.name}: {len(spec.runs)} runs in {time.perf_counter() - t0:.1f}s -> {fig}", file=sys.stderr)
        written.append(fig)
    return written
