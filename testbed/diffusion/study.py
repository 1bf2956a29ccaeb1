"""The image study of ``testbed reproduce --diffusion``: pre-train the tiny class-conditional model (cached per
seed), fine-tune it with REBEL, PPO (DDPO) and DPO at an equal number of reward queries on every seed, then draw
figures/diffusion_reward.png, diffusion_samples.png and diffusion-table.md (``-quick`` before the extension for
the quick variant)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

STUDY = "digits_compress"


def reproduce_diffusion(experiments: str | Path = "experiments", figures: str | Path = "figures",
                        runs: str | Path = "runs", quick: bool = False, progress: bool = True) -> list[Path]:
    from testbed.diffusion.spec import load_diffusion_spec
    from testbed.diffusion.train import run_diffusion_spec
    from testbed.plotting.diffusion import plot_reward, plot_samples, table

    name = STUDY + ("_quick" if quick else "")
    spec = load_diffusion_spec(Path(experiments) / "diffusion" / f"{name}.yaml")
    t0 = time.perf_counter()
    run_dir = run_diffusion_spec(spec, Path(runs) / name, overwrite=True, progress=progress)
    wall = time.perf_counter() - t0
    suffix = "-quick" if quick else ""
    figures = Path(figures)
    written = [plot_reward(run_dir, figures / f"diffusion_reward{suffix}.png"),
               plot_samples(run_dir, figures / f"diffusion_samples{suffix}.png"),
               table(run_dir, figures / f"diffusion-table{suffix}.md", wall_seconds=wall)]
    print(f"{name}: {len(spec.algorithms) * len(spec.seeds)} runs in {wall / 60:.1f} min -> "
          + ", ".join(str(f) for f in written), file=sys.stderr)
    return written
