"""`--log tensorboard` and key=value overrides on the LM and image run commands: the event scalars equal
metrics.csv (the measured wall-time columns aside), and the run folder is byte-identical without logging."""

import csv
from pathlib import Path

import pytest
import yaml

pytest.importorskip("tensorboard")
pytest.importorskip("transformers")

from llm_helpers import toy_spec  # noqa: E402
from test_researcher_workflow import _event_scalars  # noqa: E402

from testbed.cli import main  # noqa: E402

MEASURED = {"wall_time", "peak_memory_mb", "tokens_per_s", "eps"}  # timings.json, not metrics.csv


def _compare(out: Path) -> int:
    scalars = _event_scalars(Path(f"{out}.logs"))
    with open(out / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    compared = 0
    for r in rows:
        for k, v in r.items():
            if k in ("run_id", "problem", "algorithm", "seed", "iteration") or k in MEASURED or v == "":
                continue
            got = scalars[f"{r['run_id']}/{k}"][int(r["iteration"])]
            assert got == pytest.approx(float(v), rel=1e-6, abs=1e-30), (r["run_id"], k)  # float32 events
            compared += 1
    return compared


def test_llm_run_logs_the_metrics_rows_to_tensorboard(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(toy_spec({"name": "rebel"}, iterations=2, batch=16, minibatch=8, eval_every=1)))
    assert main(["llm", "run", str(spec), "--out", str(tmp_path / "out"), "--quiet", "--log", "tensorboard"]) == 0
    assert _compare(tmp_path / "out") >= 2 * 5  # reward, kl_ref, loss, ... at iterations 1 and 2
    assert main(["llm", "run", str(spec), "--out", str(tmp_path / "plain"), "--quiet"]) == 0
    for f in ("metrics.csv", "runs.csv"):
        assert (tmp_path / "plain" / f).read_bytes() == (tmp_path / "out" / f).read_bytes()


def test_diffusion_run_logs_to_tensorboard_and_takes_overrides(tmp_path, capsys):
    pytest.importorskip("diffusers")
    pytest.importorskip("sklearn")
    from test_diffusion_runs import tiny_spec

    spec = tiny_spec(tmp_path, algorithms=[{"name": "rebel", "eta": 10.0}])
    assert main(["diffusion", "run", str(spec), "--out", str(tmp_path / "bad"), "--quiet", "sampler.stepz=2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "stepz" in err[0] and not (tmp_path / "bad").exists()
    assert main(["diffusion", "run", str(spec), "train.iterations=2", "--out", str(tmp_path / "out"), "--quiet",
                 "--log", "tensorboard"]) == 0
    assert yaml.safe_load((tmp_path / "out" / "config.yaml").read_text())["train"]["iterations"] == 2
    assert _compare(tmp_path / "out") >= 2 * 3
    assert main(["diffusion", "run", str(spec), "train.iterations=2", "--out", str(tmp_path / "plain"), "--quiet"]) == 0
    assert (tmp_path / "plain" / "metrics.csv").read_bytes() == (tmp_path / "out" / "metrics.csv").read_bytes()
