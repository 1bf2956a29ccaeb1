"""The LM track's reruns, resumes and numerical stops (issue 17, items 3, 4, 5, 9, 10), on a tiny model:
a NaN reward stops the run with one line naming the quantity and the iteration (exit 1, not "internal error"),
a resume from another folder continues, an edited prompt file refuses the resume naming it, and a
second run into a held folder is refused."""

from __future__ import annotations

import json
import os

import pytest

pytest.importorskip("transformers")

import yaml  # noqa: E402
from llm_helpers import toy_spec  # noqa: E402

from testbed.algorithms import ALGORITHMS  # noqa: E402
from testbed.cli import main  # noqa: E402


def one_line(capsys) -> str:
    err = [line for line in capsys.readouterr().err.strip().splitlines() if line]
    assert len(err) == 1, err
    return err[0]


def small(**extra) -> dict:
    raw = toy_spec({"name": "rebel"}, iterations=4, batch=8, minibatch=4, max_new_tokens=3, eval_every=2, **extra)
    raw["prompts"]["count"], raw["eval_prompts"]["count"] = 16, 8
    return raw


def test_a_nan_reward_stops_the_lm_run_in_one_line(tmp_path, monkeypatch, capsys):
    (tmp_path / "nan_reward.py").write_text("def score(prompt, response):\n    return float('nan')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    raw = small()
    raw["reward"] = {"kind": "function", "module": "nan_reward:score"}
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(raw))
    rc = main(["llm", "run", str(spec), "--out", str(tmp_path / "out"), "--quiet"])
    line = one_line(capsys)
    # the first NaN is the evaluation of pi_0 (iteration 0), before any update
    assert rc == 1 and line.startswith("testbed: numerical error: run rebel-0-s0: eval/scores became nan at iteration 0")
    assert "no checkpoint was written" in line
    assert sorted(os.listdir(tmp_path)) == ["nan_reward.py", "spec.yaml"]  # no folder, no temporary, no lock


def interrupted(tmp_path, monkeypatch, raw) -> None:
    """`llm run --checkpoint-every 1` interrupted (Ctrl-C) in its third update."""
    cls = ALGORITHMS["rebel"]
    real, calls = cls.lm_update, []

    def update(self, *a):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(self, *a)

    with monkeypatch.context() as m:
        m.setattr(cls, "lm_update", update)
        assert main(["llm", "run", "spec.yaml", "--out", "out", "--quiet", "--checkpoint-every", "1"]) == 130
    assert any(p.suffix == ".ckpt" for p in (tmp_path / "out.partial").iterdir())


def test_an_lm_run_resumes_from_another_folder_and_refuses_an_edited_prompt_file(tmp_path, monkeypatch, capsys):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"say good {i}"}) + "\n" for i in range(16)))
    raw = small()
    raw["prompts"] = {"file": "prompts.jsonl"}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(raw))
    monkeypatch.chdir(tmp_path)
    interrupted(tmp_path, monkeypatch, raw)
    stored = yaml.safe_load((tmp_path / "out.partial" / "config.yaml").read_text())
    assert list(stored["inputs"]) == [str(prompts.resolve())]
    capsys.readouterr()

    prompts.write_text(prompts.read_text().replace("say good 3", "say bad 3"))
    rc = main(["llm", "run", "spec.yaml", "--out", "out", "--quiet", "--resume", "--checkpoint-every", "1"])
    line = one_line(capsys)
    assert rc == 2 and f"input file {str(prompts.resolve())!r} changed" in line and not (tmp_path / "out").exists()

    prompts.write_text(prompts.read_text().replace("say bad 3", "say good 3"))  # restored: the resume goes on
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    calls = []
    cls = ALGORITHMS["rebel"]
    real = cls.lm_update
    monkeypatch.setattr(cls, "lm_update", lambda self, *a: calls.append(1) or real(self, *a))
    assert main(["llm", "run", str(tmp_path / "spec.yaml"), "--out", str(tmp_path / "out"), "--quiet", "--resume",
                 "--checkpoint-every", "1"]) == 0
    assert len(calls) == 4 - 2  # continued from the checkpoint after update 2
    assert not list(tmp_path.glob(".out.*"))  # no temporary folder, no lock file left


def test_a_second_lm_run_into_a_held_folder_is_refused(tmp_path, capsys):
    from testbed.results import out_lock

    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(small()))
    with out_lock(tmp_path / "out"):
        rc = main(["llm", "run", str(spec), "--out", str(tmp_path / "out"), "--quiet"])
        line = one_line(capsys)
    assert rc == 2 and f"another run (PID {os.getpid()}) is writing it" in line
    assert sorted(os.listdir(tmp_path)) == ["spec.yaml"]
