"""The CLI's bad-input contract.

Bad input prints exactly one line ``testbed: error: <message>`` to stderr, exits 2, shows no
traceback, names the bad field, and writes nothing (no run folder, no hidden ``.<name>.tmp-*``
folder next to it). Rerunning into an existing ``--out`` folder refuses unless ``--overwrite``.

Most cases call :func:`testbed.cli.main` in-process (fast); a representative subset runs the real
``python -m testbed.cli`` in a subprocess to prove the exit code and the absence of a traceback.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from testbed.algorithms.preference import PREFERENCE_ALGORITHMS
from testbed.cli import main
from testbed.errors import InputError

# ----- tiny specs and instance files ---------------------------------------------------------------
TABULAR = "[{kind: tabular, contexts: 2, actions: 3}]"
REWARDS = np.array([[0.0, 1.0, 0.5], [0.2, 0.3, 0.4]])  # X = 2 contexts, Y = 3 actions


def spec_text(problems: str = TABULAR, algorithms: str = "[{name: rebel, eta: 1}]", iterations: str | None = "2",
              extra: str = "") -> str:
    lines = [f"problems: {problems}", f"algorithms: {algorithms}"]
    if iterations is not None:
        lines.append(f"iterations: {iterations}")
    return "\n".join(lines) + "\n" + extra


def algo(params: str) -> dict:
    """A spec whose only algorithm is ``{name: rebel, <params>}``."""
    return {"spec.yaml": spec_text(algorithms=f"[{{name: rebel, {params}}}]")}


def problem(entry: str) -> dict:
    return {"spec.yaml": spec_text(problems=f"[{entry}]")}


def instance(**arrays) -> dict:
    """A spec that loads ``inst.npz`` holding ``arrays``."""
    return {"spec.yaml": spec_text(problems="[{file: inst.npz}]", algorithms="[{name: rebel}]"), "inst.npz": arrays}


VALID = {"spec.yaml": spec_text()}

# (algorithm, its params, the field its mode never reads, that mode): each runs without the field (test_unread_*)
UNREAD = [("dpo", "mode: population, pairs: 100", "pairs", "mode: population"),
          ("dpo", "mode: online, mu: uniform", "mu", "mode: online"),
          ("sft", "mode: population, solver: exact, demonstrator: best_of_n, lr: 0.1", "lr", "solver: exact"),
          ("rebel", "mode: exact, pairs: 10", "pairs", "mode: exact"),
          # REBEL: the solver and the Adam solver's fields (its loss form too) under the exact update and least squares
          ("rebel", "mode: exact, solver: adam", "solver", "mode: exact"),
          ("rebel", "mode: exact, epochs: 3", "epochs", "mode: exact"),
          ("rebel", "mode: exact, lr: 0.1", "lr", "mode: exact"),
          ("rebel", "mode: exact, minibatch: 8", "minibatch", "mode: exact"),
          ("rebel", "mode: exact, form: official", "form", "mode: exact"),
          ("rebel", "mode: sampled, solver: lstsq, pairs: 10, minibatch: 8", "minibatch", "solver: lstsq"),
          ("rebel", "mode: sampled, pairs: 10, epochs: 2", "epochs", "solver: lstsq"),
          ("rebel", "mode: sampled, pairs: 10, lr: 0.1", "lr", "solver: lstsq"),
          ("rebel", "mode: sampled, pairs: 10, form: official", "form", "solver: lstsq"),
          ("rebel", "offline_size: 3", "offline_size", "y_prime: policy"),
          ("rebel", "mode: sampled, pairs: 10, y_prime: ref, offline_size: 3", "offline_size", "y_prime: ref"),
          ("npg", "mode: exact, samples: 10", "samples", "mode: exact"),
          ("npg", "mode: exact, damping: 0.1", "damping", "mode: exact"),
          ("dpo", "mode: online, pairs: 10, optimizer: adam", "optimizer", "mode: online"),
          ("dpo", "mode: offline, pairs: 10, optimizer: gd", "optimizer", "mode: offline"),
          ("dpo", "mode: population, minibatch: 8", "minibatch", "mode: population"),
          ("dpo", "pairs: 10, labels: deterministic, temperature: 2.0", "temperature", "labels: deterministic"),
          ("dpo", "pairs: 10, preferences: prefs.npz", "preferences", "labels: bt"),
          ("sft", "demonstrations: 10, n: 3", "n", "demonstrator: optimal"),
          ("sft", "mode: population, demonstrator: best_of_n, demonstrations: 10", "demonstrations", "mode: population"),
          ("sft", "mode: population, solver: exact, demonstrator: best_of_n, epochs: 2", "epochs", "solver: exact"),
          ("sft", "mode: population, demonstrator: best_of_n, minibatch: 8", "minibatch", "mode: population"),
          # preference algorithms (on PREFERENCE)
          ("rebel_pref", "mode: exact, pairs: 3", "pairs", "mode: exact"),
          ("rebel_pref", "mode: exact, oracle: probability", "oracle", "mode: exact"),
          ("rebel_pref", "mode: exact, target: self_play, opponents: 2", "opponents", "mode: exact"),
          ("rebel_pref", "mode: sampled, pairs: 10, opponents: 2", "opponents", "target: pair"),
          ("sppo", "mode: exact, samples: 10", "samples", "mode: exact"),
          ("sppo", "mode: exact, opponents: 2", "opponents", "mode: exact"),
          ("sppo", "mode: exact, oracle: probability", "oracle", "mode: exact"),
          ("sppo", "mode: exact, epochs: 2", "epochs", "mode: exact"),
          ("sppo", "mode: exact, minibatch: 8", "minibatch", "mode: exact"),
          ("sppo", "mode: exact, lr: 0.5", "lr", "mode: exact"),
          ("bt_rebel", "mode: exact, pairs: 30", "pairs", "mode: exact"),
          ("bt_rebel", "dataset: 30", "dataset", "reward_model: population"),
          ("bt_rebel", "l2: 0.1", "l2", "reward_model: population"),
          ("nash_md", "tau: 0.1, eta: 0.5", "eta", "schedule: decreasing")]
PREFERENCE = "[{kind: preference, family: rps}]"


def unread_spec(name: str, params: str) -> dict:
    """The spec of one UNREAD row: its algorithm on a problem of the kind it runs on."""
    problems = PREFERENCE if name in PREFERENCE_ALGORITHMS else TABULAR
    files = {"spec.yaml": spec_text(problems=problems, algorithms=f"[{{name: {name}, {params}}}]")}
    if "prefs.npz" in params:  # an existing, valid file (as labels: tensor reads it)
        files["prefs.npz"] = {"preferences": np.full((2, 3, 3), 0.5)}
    return files


# id -> (files to write into tmp_path, substrings the error message must contain)
CASES: dict[str, tuple[dict, tuple[str, ...]]] = {
    # problems
    "problem-kind-unknown": (problem("{kind: quantum, contexts: 2, actions: 3}"), ("problems[0].kind", "quantum")),
    "problem-family-unknown": (problem("{kind: tabular, family: bogus, contexts: 2, actions: 3}"),
                               ("problems[0]", "family", "bogus")),
    "problem-contexts-zero": (problem("{kind: tabular, contexts: 0, actions: 3}"), ("problems[0]", "contexts")),
    "problem-field-unknown": (problem("{kind: tabular, contexts: 2, actions: 3, colour: red}"),
                              ("problems[0]", "colour")),
    "linear-misspecification-2": (problem("{kind: linear, contexts: 2, actions: 3, dim: 2, misspecification: 2.0}"),
                                  ("problems[0]", "misspecification")),
    "problems-missing": ({"spec.yaml": "algorithms: [{name: rebel}]\niterations: 2\n"}, ("problems",)),
    # algorithms
    "algorithm-name-unknown": ({"spec.yaml": spec_text(algorithms="[{name: trpo, eta: 1}]")},
                               ("algorithms[0].name", "ppo")),
    "eta-negative": (algo("eta: -1"), ("algorithms[0].eta",)),
    "eta-zero": (algo("eta: 0"), ("algorithms[0].eta",)),
    "eta-string": (algo("eta: abc"), ("algorithms[0].eta", "abc")),
    "eta-empty-list": (algo("eta: []"), ("algorithms[0].eta", "empty list")),
    "npg-eta-negative": ({"spec.yaml": spec_text(algorithms="[{name: npg, eta: -1}]")}, ("algorithms[0].eta",)),
    "beta-negative": (algo("eta: 1, beta: -0.1"), ("algorithms[0].beta",)),
    "eta-times-beta-above-1": (algo("eta: 10, beta: 0.5"), ("algorithms[0]", "eta·beta")),
    "algorithm-param-unknown": (algo("eta: 1, gamma: 3"), ("algorithms[0]", "gamma")),
    "y_prime-unknown": (algo("eta: 1, y_prime: bogus"), ("algorithms[0].y_prime", "bogus")),
    "solver-unknown": (algo("eta: 1, mode: sampled, solver: sgd"), ("algorithms[0].solver", "sgd")),
    "mode-unknown": (algo("eta: 1, mode: approximate"), ("algorithms[0].mode", "approximate")),
    "policy-unknown": (algo("eta: 1, policy: transformer"), ("algorithms[0].policy", "transformer")),
    "policy-mlp-exact-rebel": (algo("eta: 1, policy: mlp"), ("algorithms[0].policy", "mlp", "solver: adam")),
    "policy-loglinear-on-tabular": (algo("eta: 1, policy: loglinear"), ("policy", "loglinear")),
    "algorithms-empty": ({"spec.yaml": spec_text(algorithms="[]")}, ("algorithms",)),
    # image-only PPO fields (DDPO's per-prompt stat tracker) on a bandit run
    "ppo-prompt-buffer-on-bandits": ({"spec.yaml": spec_text(algorithms="[{name: ppo, prompt_buffer: 16}]")},
                                     ("algorithms[0].prompt_buffer applies to diffusion runs only",)),
    "ppo-prompt-min-count-on-bandits": ({"spec.yaml": spec_text(algorithms="[{name: ppo, prompt_min_count: 8}]")},
                                        ("algorithms[0].prompt_min_count applies to diffusion runs only",)),
    # a field given where the configuration never reads it (metadata unread_when); its default is never refused
    **{f"unread-{name}-{field}-{mode.replace(': ', '-')}": (unread_spec(name, params),
                                                          (f"algorithms[0].{field} is not read with {mode} (remove it)",))
       for name, params, field, mode in UNREAD},
    # top level
    "top-level-key-unknown": ({"spec.yaml": spec_text(extra="learning_rate: 0.1\n")}, ("learning_rate",)),
    "iterations-missing": ({"spec.yaml": spec_text(iterations=None)}, ("iterations",)),
    "iterations-zero": ({"spec.yaml": spec_text(iterations="0")}, ("iterations",)),
    "eval_every-zero": ({"spec.yaml": spec_text(extra="eval_every: 0\n")}, ("eval_every",)),
    "seeds-negative-entry": ({"spec.yaml": spec_text(extra="seeds: [0, -1]\n")}, ("seeds", "-1")),
    "seeds-repeating": ({"spec.yaml": spec_text(extra="seeds: [1, 1]\n")}, ("seeds", "repeat")),
    "plot-y-unknown": ({"spec.yaml": spec_text(extra="plot: {y: nonsense}\n")}, ("plot.y", "nonsense")),
    "plot-x-unknown": ({"spec.yaml": spec_text(extra="plot: {x: wallclock}\n")}, ("plot.x", "wallclock")),
    # the spec file itself
    "spec-file-missing": ({}, ("spec.yaml", "does not exist")),
    "spec-file-is-a-folder": ({"spec.yaml/inner.yaml": spec_text()}, ("spec.yaml", "is a folder")),
    "spec-not-yaml": ({"spec.yaml": "problems: [unclosed\n  : : :\n"}, ("spec.yaml", "not valid YAML")),
    "spec-not-a-mapping": ({"spec.yaml": "- just\n- a list\n"}, ("spec.yaml", "mapping")),
    # instance files
    "npz-missing": ({"spec.yaml": spec_text(problems="[{file: nope.npz}]", algorithms="[{name: rebel}]")},
                    ("problems[0]", "nope.npz", "does not exist")),
    "npz-rho-sum-not-1": (instance(rewards=REWARDS, rho=np.array([0.5, 0.6])), ("inst.npz", "rho", "sum to 1")),
    "npz-rho-negative": (instance(rewards=REWARDS, rho=np.array([1.5, -0.5])), ("inst.npz", "rho", "non-negative")),
    "npz-rho-wrong-length": (instance(rewards=REWARDS, rho=np.array([0.2, 0.3, 0.5])), ("inst.npz", "rho", "shape")),
    "npz-pi_ref-rows-not-1": (instance(rewards=REWARDS, pi_ref=np.full((2, 3), 0.5)),
                              ("inst.npz", "pi_ref", "sum to 1")),
    "npz-pi_ref-has-zero": (instance(rewards=REWARDS, pi_ref=np.array([[0.0, 0.5, 0.5], [0.2, 0.3, 0.5]])),
                            ("inst.npz", "pi_ref", "strictly positive")),
    "npz-pi_ref-wrong-shape": (instance(rewards=REWARDS, pi_ref=np.full((3, 2), 0.5)),
                               ("inst.npz", "pi_ref", "shape")),
    "npz-reward-nan": (instance(rewards=np.array([[0.0, np.nan, 1.0], [0.0, 0.0, 0.0]])),
                       ("inst.npz", "rewards", "finite")),
    "npz-reward-inf": (instance(rewards=np.array([[0.0, np.inf, 1.0], [0.0, 0.0, 0.0]])),
                       ("inst.npz", "rewards", "finite")),
    "npz-rewards-1d": (instance(rewards=np.ones(3)), ("inst.npz", "rewards", "2-d")),
    "npz-rewards-missing": (instance(rho=np.array([0.5, 0.5])), ("inst.npz", "rewards")),
    "npz-theta_star-wrong-length": (instance(features=np.ones((2, 3, 2)), theta_star=np.ones(3) / 3),
                                    ("inst.npz", "theta_star", "shape")),
    "npz-garbage-bytes": ({**instance(), "inst.npz": b"this is not a zip file \x00\x01\x02" * 4},
                          ("inst.npz", "not an .npz archive")),
    "npz-array-name-unknown": (instance(rewards=REWARDS, bonus=np.ones(3)), ("inst.npz", "bonus")),
}

# run through the real interpreter as well: exit code and no traceback, end to end
SUBPROCESS_IDS = ["eta-negative", "algorithm-name-unknown", "eta-times-beta-above-1", "spec-file-missing",
                  "spec-not-yaml", "npz-missing", "npz-rho-sum-not-1", "npz-garbage-bytes"]


# ----- helpers -------------------------------------------------------------------------------------
def write_files(root: Path, files: dict) -> None:
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        elif isinstance(content, str):
            path.write_text(content, encoding="utf-8")
        else:
            with open(path, "wb") as f:
                np.savez(f, **content)


def listing(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir())


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def assert_one_error_line(stderr: str, *expect: str) -> str:
    assert "Traceback" not in stderr, stderr
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, f"expected exactly one line on stderr, got:\n{stderr}"
    line = lines[0]
    assert line.startswith("testbed: error:"), line
    for s in expect:
        assert s in line, f"{s!r} not in {line!r}"
    return line


def assert_nothing_written(root: Path, before: list[str], out: str = "out") -> None:
    after = listing(root)
    assert out not in after
    hidden = [n for n in after if n.startswith(".")]
    assert not hidden, f"leftover hidden files/folders: {hidden}"
    assert after == before


def run_cli(cwd: Path, *argv: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONIOENCODING="utf-8")
    return subprocess.run([sys.executable, "-m", "testbed.cli", *argv], cwd=cwd, capture_output=True,
                          text=True, encoding="utf-8", env=env, timeout=120)


def run_in_process(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


# ----- bad input to `testbed run` ------------------------------------------------------------------
@pytest.mark.parametrize(("files", "expect"), [pytest.param(*v, id=k) for k, v in CASES.items()])
def test_run_bad_input(tmp_path, monkeypatch, capsys, files, expect):
    write_files(tmp_path, files)
    monkeypatch.chdir(tmp_path)
    before = listing(tmp_path)
    rc, out, err = run_in_process(capsys, "run", "spec.yaml", "--out", "out", "--quiet")
    assert rc == 2
    assert out == ""
    assert_one_error_line(err, *expect)
    assert_nothing_written(tmp_path, before)


@pytest.mark.parametrize(("files", "expect"), [pytest.param(*CASES[k], id=k) for k in SUBPROCESS_IDS])
def test_run_bad_input_subprocess(tmp_path, files, expect):
    write_files(tmp_path, files)
    before = listing(tmp_path)
    proc = run_cli(tmp_path, "run", "spec.yaml", "--out", "out", "--quiet")
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    assert_one_error_line(proc.stderr, *expect)
    assert_nothing_written(tmp_path, before)


@pytest.mark.parametrize(("name", "params", "field"), [u[:3] for u in UNREAD],
                         ids=[f"{u[0]}-{u[2]}-{u[3].replace(': ', '-')}" for u in UNREAD])
def test_unread_field_left_out_is_its_default_not_an_error(tmp_path, monkeypatch, capsys, name, params, field):
    """The configurations refused above with the unread field run without it (the default is never refused)."""
    kept = ", ".join(kv for kv in params.split(", ") if not kv.startswith(f"{field}:"))
    write_files(tmp_path, unread_spec(name, kept))
    monkeypatch.chdir(tmp_path)
    rc, _, err = run_in_process(capsys, "run", "spec.yaml", "--out", "out", "--quiet")
    assert rc == 0, err


# (algorithm, params giving fields UNREAD refuses elsewhere, under the setting that reads them)
READ = [("rebel", "mode: sampled, solver: adam, pairs: 10, epochs: 2, minibatch: 4, lr: 0.1, form: official"),
        ("rebel", "mode: sampled, pairs: 10, y_prime: offline, offline_size: 3"),
        ("npg", "mode: sampled, samples: 10, damping: 0.1"),
        ("dpo", "mode: population, optimizer: adam, epochs: 2"),
        ("dpo", "mode: offline, pairs: 10, minibatch: 4, temperature: 2.0"),
        ("dpo", "pairs: 10, labels: tensor, preferences: prefs.npz"),
        ("sft", "mode: population, demonstrator: best_of_n, n: 2, solver: exact"),
        ("sft", "demonstrator: best_of_n, n: 2, demonstrations: 10, epochs: 2, minibatch: 4"),
        ("rebel_pref", "mode: sampled, target: self_play, pairs: 10, oracle: probability, opponents: 2"),
        ("sppo", "mode: sampled, samples: 10, opponents: 2, oracle: probability, epochs: 2, minibatch: 4, lr: 0.5"),
        ("bt_rebel", "mode: sampled, pairs: 10, reward_model: sampled, dataset: 30, l2: 0.1"),
        ("nash_md", "tau: 0.1, eta: 0.5, schedule: constant")]


@pytest.mark.parametrize(("name", "params"), READ, ids=[f"{r[0]}-{i}" for i, r in enumerate(READ)])
def test_a_field_is_not_refused_where_its_configuration_reads_it(tmp_path, monkeypatch, capsys, name, params):
    """The fields UNREAD refuses run where the configuration reads them (unread_when is no broader than the code)."""
    write_files(tmp_path, unread_spec(name, params))
    monkeypatch.chdir(tmp_path)
    rc, _, err = run_in_process(capsys, "run", "spec.yaml", "--out", "out", "--quiet")
    assert rc == 0, err


def test_lm_defaults_decide_what_is_unread_on_the_lm_track():
    """REBEL on the LM track defaults to mode: sampled, solver: adam, so the Adam solver's fields are read there (the
    bandit defaults, exact and lstsq, would leave them unread); given an exact mode, they are refused as on bandits."""
    from testbed.algorithms import ALGORITHMS, build_config
    from testbed.algorithms.base import UnreadField

    cls = ALGORITHMS["rebel"]
    given = {"epochs": 2, "minibatch": 4, "grad_accum": 2, "form": "paper"}
    cfg = build_config(cls.Config, given, "algorithms[0]", "lm")
    assert (cfg.mode, cfg.solver, cfg.epochs, cfg.grad_accum, cfg.form) == ("sampled", "adam", 2, 2, "paper")
    with pytest.raises(UnreadField) as e:
        build_config(cls.Config, {"mode": "exact", "grad_accum": 2}, "algorithms[0]", "lm")
    assert str(e.value) == "algorithms[0].grad_accum is not read with mode: exact (remove it)"
    with pytest.raises(UnreadField) as e:  # the first deciding field that leaves it unread names the reason
        build_config(cls.Config, {"epochs": 2}, "algorithms[0]", "bandit")
    assert str(e.value) == "algorithms[0].epochs is not read with mode: exact (remove it)"


@pytest.mark.parametrize("algorithms,runs", [
    ("[{name: rebel, mode: [exact, sampled], pairs: 20}]", 2),  # pairs is read by the sampled point
    ("[{name: rebel, mode: sampled, pairs: 20, solver: [lstsq, adam], epochs: 2}]", 2),  # epochs: read by adam
    ("[{name: dpo, mode: population, pairs: 20, beta: [0.1, 0.2]}]", None),  # pairs: read by neither point
    ("[{name: dpo, mode: [offline, online], mu: uniform}]", 2),  # mu: read offline
])
def test_a_swept_entry_refuses_only_a_field_no_point_reads(tmp_path, monkeypatch, capsys, algorithms, runs):
    """A sweep over the deciding field: the entry's field is refused only when no point of the sweep reads it
    (the user cannot 'remove it' for one point of a sweep)."""
    write_files(tmp_path, {"spec.yaml": spec_text(algorithms=algorithms)})
    monkeypatch.chdir(tmp_path)
    rc, _, err = run_in_process(capsys, "run", "spec.yaml", "--out", "out", "--quiet")
    if runs is None:
        assert rc == 2 and len(err.strip().splitlines()) == 1 and "pairs is not read with mode: population" in err
        assert not (tmp_path / "out").exists()
    else:
        assert rc == 0, err
        import yaml
        runs_written = yaml.safe_load((tmp_path / "out" / "config.yaml").read_text())["runs"]
        assert len(runs_written) == runs  # every point of the sweep ran (none dropped with the field)


def test_valid_spec_runs(tmp_path, monkeypatch, capsys):
    """Sanity check for the fixtures above: the unmodified tiny spec is accepted."""
    write_files(tmp_path, VALID)
    monkeypatch.chdir(tmp_path)
    rc, out, err = run_in_process(capsys, "run", "spec.yaml", "--out", "out", "--quiet")
    assert rc == 0, err
    assert "out" in out
    assert {"config.yaml", "metrics.csv", "policies.npz", "meta.json"} <= set(listing(tmp_path / "out"))
    assert [n for n in listing(tmp_path) if n.startswith(".")] == []


# ----- existing --out folder -----------------------------------------------------------------------
def test_run_refuses_existing_out_then_overwrites(tmp_path, monkeypatch, capsys):
    write_files(tmp_path, VALID)
    out = tmp_path / "out"
    (out / "sub").mkdir(parents=True)
    (out / "keep.txt").write_bytes(b"precious results\n")
    (out / "sub" / "data.bin").write_bytes(bytes(range(256)))
    before = snapshot(out)

    # the real CLI refuses, and leaves the folder byte-for-byte as it was
    proc = run_cli(tmp_path, "run", "spec.yaml", "--out", "out", "--quiet")
    assert proc.returncode == 2
    assert_one_error_line(proc.stderr, "--out", "out", "already exists", "--overwrite")
    assert snapshot(out) == before

    # a bad spec into an existing folder is refused too and changes nothing
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.yaml").write_text(spec_text(algorithms="[{name: rebel, eta: -1}]"))
    rc, _, err = run_in_process(capsys, "run", "bad.yaml", "--out", "out", "--quiet")
    assert rc == 2
    assert_one_error_line(err)
    assert snapshot(out) == before

    # --overwrite refuses a folder that is not a run folder (it would delete the user's files)
    rc, _, err = run_in_process(capsys, "run", "spec.yaml", "--out", "out", "--overwrite", "--quiet")
    assert rc == 2
    assert_one_error_line(err, "--out", "not a run folder")
    assert snapshot(out) == before

    # --overwrite replaces a run folder with a complete new one and leaves nothing hidden behind
    assert run_in_process(capsys, "run", "spec.yaml", "--out", "run", "--quiet")[0] == 0
    first = (tmp_path / "run" / "timings.json").read_text()
    rc, _, err = run_in_process(capsys, "run", "spec.yaml", "--out", "run", "--overwrite", "--quiet")
    assert rc == 0, err
    assert set(listing(tmp_path / "run")) == {"config.yaml", "metrics.csv", "policies.npz", "meta.json", "runs.csv",
                                                      "timings.json"}
    assert (tmp_path / "run" / "timings.json").read_text() != first  # new timestamps: really rewritten
    assert [n for n in listing(tmp_path) if n.startswith(".")] == []


def test_run_bad_spec_with_overwrite_keeps_existing_folder(tmp_path, monkeypatch, capsys):
    write_files(tmp_path, algo("eta: -1"))
    out = tmp_path / "out"
    out.mkdir()
    (out / "meta.json").write_bytes(b"{}\n")  # looks like a run folder, so only the bad spec stops it
    (out / "metrics.csv").write_bytes(b"precious results\n")
    before = snapshot(out)
    monkeypatch.chdir(tmp_path)
    rc, _, err = run_in_process(capsys, "run", "spec.yaml", "--out", "out", "--overwrite", "--quiet")
    assert rc == 2
    assert_one_error_line(err, "algorithms[0].eta")
    assert snapshot(out) == before
    assert [n for n in listing(tmp_path) if n.startswith(".")] == []


def test_run_out_is_a_file(tmp_path, monkeypatch, capsys):
    write_files(tmp_path, VALID)
    (tmp_path / "out").write_bytes(b"not a folder")
    monkeypatch.chdir(tmp_path)
    rc, _, err = run_in_process(capsys, "run", "spec.yaml", "--out", "out", "--overwrite", "--quiet")
    assert rc == 2
    assert_one_error_line(err, "--out", "not a folder")
    assert (tmp_path / "out").read_bytes() == b"not a folder"


# ----- `testbed plot` on something that is not a run folder ------------------------------------------
@pytest.mark.parametrize(("setup", "expect"), [
    pytest.param({}, ("run1", "config.yaml"), id="empty-folder"),
    pytest.param(None, ("run1", "does not exist"), id="missing-folder"),
    pytest.param({"config.yaml": "runs: []\n"}, ("run1", "metrics.csv"), id="no-metrics-csv"),
])
def test_plot_not_a_run_folder(tmp_path, monkeypatch, capsys, setup, expect):
    if setup is not None:
        (tmp_path / "run1").mkdir()
        write_files(tmp_path / "run1", setup)
    monkeypatch.chdir(tmp_path)
    before = snapshot(tmp_path)
    rc, out, err = run_in_process(capsys, "plot", "run1")
    assert rc == 2
    assert out == ""
    assert_one_error_line(err, *expect)
    assert snapshot(tmp_path) == before  # no figure written


def test_plot_not_a_run_folder_subprocess(tmp_path):
    (tmp_path / "run1").mkdir()
    proc = run_cli(tmp_path, "plot", "run1")
    assert proc.returncode == 2
    assert_one_error_line(proc.stderr, "run1", "config.yaml")
    assert listing(tmp_path / "run1") == []


# ----- argparse usage errors go through InputError -------------------------------------------------
USAGE_CASES = [
    pytest.param(["frobnicate"], ("frobnicate",), id="unknown-subcommand"),
    pytest.param([], ("command",), id="no-subcommand"),
    pytest.param(["run"], ("spec", "--out"), id="run-missing-spec-and-out"),
    pytest.param(["run", "spec.yaml"], ("--out",), id="run-missing-out"),
    pytest.param(["run", "spec.yaml", "--out", "out", "--bogus"], ("--bogus",), id="run-unknown-option"),
    pytest.param(["plot"], ("dir",), id="plot-missing-dir"),
    pytest.param(["reproduce", "--only"], ("--only",), id="reproduce-only-without-names"),
]


@pytest.mark.parametrize(("argv", "expect"), USAGE_CASES)
def test_usage_errors(tmp_path, monkeypatch, capsys, argv, expect):
    write_files(tmp_path, VALID)
    monkeypatch.chdir(tmp_path)
    before = listing(tmp_path)
    rc, out, err = run_in_process(capsys, *argv)
    assert rc == 2
    assert out == ""
    assert_one_error_line(err, *expect)
    assert_nothing_written(tmp_path, before)


@pytest.mark.parametrize(("argv", "expect"), [USAGE_CASES[0], USAGE_CASES[3]])
def test_usage_errors_subprocess(tmp_path, argv, expect):
    proc = run_cli(tmp_path, *argv)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert_one_error_line(proc.stderr, *expect)
    assert listing(tmp_path) == []


# ----- --debug shows the traceback -----------------------------------------------------------------
def test_debug_shows_traceback_subprocess(tmp_path):
    write_files(tmp_path, algo("eta: -1"))
    proc = run_cli(tmp_path, "--debug", "run", "spec.yaml", "--out", "out", "--quiet")
    assert proc.returncode != 0
    assert "Traceback" in proc.stderr
    assert "InputError" in proc.stderr
    assert "algorithms[0].eta" in proc.stderr
    assert "out" not in listing(tmp_path)


def test_debug_reraises_in_process(tmp_path, monkeypatch):
    write_files(tmp_path, algo("eta: -1"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError, match=r"algorithms\[0\]\.eta"):
        main(["--debug", "run", "spec.yaml", "--out", "out", "--quiet"])
    assert "out" not in listing(tmp_path)


# ----- inputs that once escaped as internal errors (exit 1); kept as regression tests -------------------
MORE_BAD = {
    "gap-string": (problem("{kind: tabular, family: gap, gap: x, contexts: 2, actions: 3}"), ("gap",)),
    "problem-seed-negative": (problem("{kind: tabular, contexts: 2, actions: 3, seed: -1}"), ("seed",)),
    "label-not-a-string": (algo("eta: [1, 2], label: 3"), ("label",)),
    "npz-noise_std-not-scalar": (instance(rewards=REWARDS, noise_std=np.ones(2)), ("noise_std",)),
    "npz-rewards-strings": (instance(rewards=np.array([["a", "b"], ["c", "d"]])), ("rewards",)),
}


@pytest.mark.parametrize(("files", "expect"), [pytest.param(*v, id=k) for k, v in MORE_BAD.items()])
def test_more_bad_input(tmp_path, monkeypatch, capsys, files, expect):
    write_files(tmp_path, files)
    monkeypatch.chdir(tmp_path)
    rc, _, err = run_in_process(capsys, "run", "spec.yaml", "--out", "out", "--quiet")
    assert rc == 2, err
    assert_one_error_line(err, *expect)


def test_misplaced_debug_flag_is_a_usage_error(tmp_path, monkeypatch, capsys):
    write_files(tmp_path, VALID)
    monkeypatch.chdir(tmp_path)
    try:
        rc, _, err = run_in_process(capsys, "run", "spec.yaml", "--out", "out", "--debug")
    except InputError as e:
        pytest.fail(f"usage error re-raised instead of one line: {e}")
    assert rc == 2
    assert_one_error_line(err, "--debug")


# ----- `testbed plot` on a run folder with bad contents -----------------------------------------------
def _edit_metrics(path: Path, edit) -> None:
    lines = path.read_text().splitlines()
    path.write_text("\n".join(edit(lines)) + "\n")


def _replace_cell(lines, row: int, column: str, value: str):
    header = lines[0].split(",")
    cells = lines[row].split(",")
    cells[header.index(column)] = value
    return [*lines[:row], ",".join(cells), *lines[row + 1:]]


# id -> (which folder, how to break it, extra plot arguments, substrings the one error line must name)
PLOT_BAD = {
    "wrong-columns": ("bandit", lambda d: (d / "metrics.csv").write_text("a,b\n1,2\n"), (),
                      ("metrics.csv", "run_id", "header")),
    "non-numeric-cell": ("bandit", lambda d: _edit_metrics(d / "metrics.csv", lambda ls: _replace_cell(ls, 2, "reward", "abc")),
                         (), ("metrics.csv", "line 3", "'reward'", "'abc'", "number")),
    "non-integer-seed": ("bandit", lambda d: _edit_metrics(d / "metrics.csv", lambda ls: _replace_cell(ls, 1, "seed", "x")),
                         (), ("metrics.csv", "line 2", "'seed'", "integer")),
    "ragged-row": ("bandit", lambda d: _edit_metrics(d / "metrics.csv", lambda ls: [*ls[:2], ls[2].rsplit(",", 2)[0], *ls[3:]]),
                   (), ("metrics.csv", "line 3", "cells", "header")),
    "long-row": ("bandit", lambda d: _edit_metrics(d / "metrics.csv", lambda ls: [*ls[:2], ls[2] + ",7", *ls[3:]]),
                 (), ("metrics.csv", "line 3", "cells", "header")),
    "empty-metrics": ("bandit", lambda d: (d / "metrics.csv").write_text(""), (), ("metrics.csv", "empty", "header")),
    "run-id-not-in-config": ("bandit",
                             lambda d: _edit_metrics(d / "metrics.csv", lambda ls: _replace_cell(ls, 1, "run_id", "zzz")),
                             (), ("metrics.csv", "'zzz'", "config.yaml")),
    "malformed-config": ("bandit", lambda d: (d / "config.yaml").write_text(": : :\n"), (), ("config.yaml", "YAML", "mapping")),
    "empty-config": ("bandit", lambda d: (d / "config.yaml").write_text(""), (), ("config.yaml", "empty", "mapping")),
    "config-a-list": ("bandit", lambda d: (d / "config.yaml").write_text("- 1\n"), (), ("config.yaml", "list", "mapping")),
    "config-without-runs": ("bandit", lambda d: (d / "config.yaml").write_text("name: x\n"), (),
                            ("config.yaml", "'runs'")),
    "eps-sweep-without-policies": ("preference", lambda d: (d / "policies.npz").unlink(), ("--kind", "eps_sweep"),
                                   ("policies.npz", "eps_sweep")),
    "frontier-on-preference-runs": ("preference", lambda d: None, ("--kind", "frontier"),
                                    ("metrics.csv", "'reward'", "frontier")),
    "table-without-suboptimality": ("preference", lambda d: None, ("--kind", "table"),
                                    ("metrics.csv", "'suboptimality'", "table")),
}


@pytest.mark.parametrize(("folder", "breaks", "extra", "expect"), [pytest.param(*v, id=k) for k, v in PLOT_BAD.items()])
def test_plot_bad_run_folder(tmp_path, monkeypatch, capsys, run_folders, folder, breaks, extra, expect):
    """One line naming the file and field and the expected form, exit 2, nothing written."""
    import shutil

    shutil.copytree(run_folders / folder, tmp_path / "run1")
    breaks(tmp_path / "run1")
    monkeypatch.chdir(tmp_path)
    before = snapshot(tmp_path)
    rc, out, err = run_in_process(capsys, "plot", "run1", *extra)
    assert rc == 2, err
    assert out == ""
    assert_one_error_line(err, *expect)
    assert snapshot(tmp_path) == before  # no figure or table written


@pytest.mark.parametrize("kind", ["aggregate", "tuned_table", "curves"])
def test_plot_kind_takes_every_kind_of_draw(kind):
    """--kind's choices are testbed.plotting.draw.KINDS (and the alias 'curves'): none left out."""
    from testbed.cli import build_parser
    from testbed.plotting.draw import KINDS

    args = build_parser().parse_args(["plot", "run1", "--kind", kind])
    assert args.kind == kind
    assert set(KINDS) <= set(next(a for a in build_parser()._subparsers._group_actions[0].choices["plot"]._actions
                                  if a.dest == "kind").choices)


def test_a_specs_plot_kinds_are_the_kinds_draw_draws():
    """experiments.spec validates ``plot:`` entries by name without importing matplotlib (PLOT_KINDS); the names
    must be draw.KINDS exactly, or a spec would be refused a kind ``testbed plot`` draws (or accepted one it cannot)."""
    from testbed.experiments.spec import PLOT_KINDS
    from testbed.plotting.draw import KINDS

    assert sorted(PLOT_KINDS) == sorted(KINDS)


def test_plot_kind_aggregate_on_a_run_folder(tmp_path, monkeypatch, capsys, run_folders):
    import shutil

    shutil.copytree(run_folders / "bandit", tmp_path / "run1")
    monkeypatch.chdir(tmp_path)
    rc, out, err = run_in_process(capsys, "plot", "run1", "--kind", "aggregate")
    assert rc == 0, err
    assert (tmp_path / "run1" / "aggregate.png").is_file() and (tmp_path / "run1" / "aggregate.md").is_file()
    rc, _, err = run_in_process(capsys, "plot", "run1", "--kind", "tuned_table")
    assert rc == 2 and "selection" in err  # not a tuned run: an InputError, not a usage error
