"""A table of bad inputs across the bandit, preference and LM command lines (issue 17, items 7-9).

Each case is a set of files written into an empty folder, a command line, and the words the one error
line must contain (the bad field, and where it matters the expected form). :func:`classify` puts the
outcome of a case into one of the categories of the reliability review:

* ``clean``     exit 2, exactly one line ``testbed: error: ...`` naming the field, nothing written;
* ``unclear``   exit 2, but the line does not name the field (or there is more than one line, or a
                traceback, or something was written);
* ``exit 1``    an internal or numerical error (or a crash / time-out);
* ``accepted silently``  exit 0.

``python tests/bad_inputs.py`` runs every case in a subprocess (the real interpreter) and prints the
count per category: the before/after census of the closing note. ``tests/test_bad_inputs.py`` runs
them in-process and asserts every case is clean.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

TOY_MODEL = "{name: 'tiny:gpt2', hidden: 32, layers: 2, heads: 2}"


def bandit_spec(problems: str = "[{kind: tabular, contexts: 2, actions: 3}]",
                algorithms: str = "[{name: rebel, eta: 1}]", extra: str = "iterations: 2\n") -> str:
    return f"problems: {problems}\nalgorithms: {algorithms}\n{extra}"


def lm_spec(model: str = TOY_MODEL, extra: str = "", reward: str = "{kind: function, name: count_token, token: good}",
            prompts: str = "{kind: toy, count: 8}", algorithms: str = "[{name: rebel, eta: 1}]",
            train: str = "{iterations: 1, batch: 8, minibatch: 4, max_new_tokens: 3, eval_every: 1, save: false}") -> str:
    return (f"model: {model}\nprompts: {prompts}\neval_prompts: {{kind: toy, count: 4, seed: 1}}\nreward: {reward}\n"
            f"algorithms: {algorithms}\ntrain: {train}\n{extra}")


@dataclass
class Case:
    files: dict
    argv: tuple[str, ...]
    expect: tuple[str, ...]
    track: str = "bandit"
    setup: str = ""  # "run": a finished bandit run folder named 'runs' is made first (plot cases)
    item: str = ""   # the review's item
    out: str = "out"  # the path that must not be created
    extra_argv: tuple[str, ...] = field(default_factory=tuple)


def run_case(files_spec: str = "spec.yaml") -> tuple[str, ...]:
    return ("run", files_spec, "--out", "out", "--quiet")


def lm_case(files_spec: str = "spec.yaml") -> tuple[str, ...]:
    return ("llm", "run", files_spec, "--out", "out", "--quiet")


REWARDS = np.array([[0.0, 1.0, 0.5], [0.2, 0.3, 0.4]])
FEATURES = np.zeros((2, 3, 2))
PREFS = np.full((1, 3, 3), 0.5)


def _npz(**arrays):
    return arrays


CASES: dict[str, Case] = {
    # ---- bandit: problem files and sizes (item 8) ------------------------------------------------------------
    "file-is-a-number": Case({"spec.yaml": bandit_spec("[{file: 3}]")}, run_case(), ("problems[0].file", "path"), item="8"),
    "file-is-null": Case({"spec.yaml": bandit_spec("[{file: null}]")}, run_case(), ("problems[0].file", "path"), item="8"),
    "file-is-a-mapping": Case({"spec.yaml": bandit_spec("[{file: {a: 1}}]")}, run_case(), ("problems[0].file",), item="8"),
    "file-is-a-folder": Case({"spec.yaml": bandit_spec("[{file: sub}]"), "sub/x": "x"}, run_case(),
                             ("problems[0].file", "folder"), item="8"),
    "seeds-2-to-70": Case({"spec.yaml": bandit_spec(extra="iterations: 2\nseeds: 1180591620717411303424\n")}, run_case(),
                          ("seeds",), item="8"),
    "iterations-2-to-70": Case({"spec.yaml": bandit_spec(extra="iterations: 1180591620717411303424\n")}, run_case(),
                               ("iterations",), item="8"),
    "tabular-1e10-entries": Case({"spec.yaml": bandit_spec("[{kind: tabular, contexts: 100000, actions: 100000}]")},
                                 run_case(), ("problems[0]", "GiB"), item="8"),
    "linear-1e10-entries": Case({"spec.yaml": bandit_spec("[{kind: linear, contexts: 10000, actions: 1000, dim: 1000}]")},
                                run_case(), ("problems[0]", "GiB"), item="8"),
    "actions-2-to-70": Case({"spec.yaml": bandit_spec("[{kind: tabular, contexts: 1, actions: 1180591620717411303424}]")},
                            run_case(), ("problems[0]", "actions"), item="8"),
    "mlp-hidden-huge": Case({"spec.yaml": bandit_spec(algorithms="[{name: rebel, eta: 1, mode: sampled, solver: adam, "
                                                      "policy: {kind: mlp, hidden: [100000, 100000]}}]")},
                            run_case(), ("algorithms[0].policy", "GiB"), item="8"),
    "sampled-pairs-huge": Case({"spec.yaml": bandit_spec(algorithms="[{name: rebel, eta: 1, mode: sampled, "
                                                         "pairs: 100000000000}]")},
                               run_case(), ("algorithms[0].pairs", "GiB"), item="8"),
    "dpo-pairs-huge": Case({"spec.yaml": bandit_spec(algorithms="[{name: dpo, mode: offline, pairs: 100000000000}]")},
                           run_case(), ("algorithms[0].pairs", "GiB"), item="8"),
    "eval-every-string": Case({"spec.yaml": bandit_spec(extra="iterations: 2\neval_every: often\n")}, run_case(),
                              ("eval_every",), item="8"),
    "name-not-a-string": Case({"spec.yaml": bandit_spec(extra="iterations: 2\nname: [a, b]\n")}, run_case(),
                              ("name",), item="8"),
    "algorithms-a-mapping": Case({"spec.yaml": bandit_spec(algorithms="{name: rebel}")}, run_case(), ("algorithms",),
                                 item="8"),
    # ---- bandit: instance files accepted silently (item 9) --------------------------------------------------
    "npz-complex-rewards": Case({"spec.yaml": bandit_spec("[{file: inst.npz}]"), "inst.npz": _npz(rewards=REWARDS + 1j)},
                                run_case(), ("rewards", "real"), item="9"),
    "npz-complex-features": Case({"spec.yaml": bandit_spec("[{file: inst.npz}]"),
                                  "inst.npz": _npz(features=FEATURES + 1j, theta_star=np.ones(2))},
                                 run_case(), ("features", "real"), item="9"),
    "npz-complex-theta": Case({"spec.yaml": bandit_spec("[{file: inst.npz}]"),
                               "inst.npz": _npz(features=FEATURES, theta_star=np.ones(2) * 1j)},
                              run_case(), ("theta_star", "real"), item="9"),
    "npz-complex-rho": Case({"spec.yaml": bandit_spec("[{file: inst.npz}]"),
                             "inst.npz": _npz(rewards=REWARDS, rho=np.array([0.5, 0.5]) + 0j)},
                            run_case(), ("rho", "real"), item="9"),
    "npz-object-array": Case({"spec.yaml": bandit_spec("[{file: inst.npz}]"),
                              "inst.npz": _npz(rewards=np.array([[None, 1, 2], [1, 2, 3]], dtype=object))},
                             run_case(), ("rewards",), item="9"),
    # ---- preference problems --------------------------------------------------------------------------------
    "pref-complex": Case({"spec.yaml": bandit_spec("[{file: inst.npz}]", "[{name: rebel_pref, eta: 1}]"),
                          "inst.npz": _npz(preferences=PREFS + 0.1j)}, run_case(), ("preferences", "real"),
                         track="preference", item="9"),
    "pref-1e11-entries": Case({"spec.yaml": bandit_spec("[{kind: preference, family: bt, contexts: 100000, actions: 1000}]",
                                                        "[{name: rebel_pref, eta: 1}]")},
                              run_case(), ("problems[0]", "GiB"), track="preference", item="8"),
    "pref-actions-2-to-70": Case({"spec.yaml": bandit_spec("[{kind: preference, family: bt, contexts: 1, "
                                                           "actions: 1180591620717411303424}]",
                                                           "[{name: rebel_pref, eta: 1}]")},
                                 run_case(), ("problems[0]", "actions"), track="preference", item="8"),
    "pref-seeds-2-to-70": Case({"spec.yaml": bandit_spec("[{kind: preference, family: rps}]", "[{name: rebel_pref, eta: 1}]",
                                                         "iterations: 2\nseeds: 1180591620717411303424\n")},
                               run_case(), ("seeds",), track="preference", item="8"),
    "pref-file-null": Case({"spec.yaml": bandit_spec("[{file: null}]", "[{name: rebel_pref, eta: 1}]")}, run_case(),
                           ("problems[0].file",), track="preference", item="8"),
    # ---- plot (item 9) --------------------------------------------------------------------------------------
    "plot-panel-by-bogus": Case({}, ("plot", "runs", "--panel-by", "bogus", "--out", "out"), ("--panel-by", "bogus", "eta"),
                                setup="run", item="9"),
    "plot-x-bogus": Case({}, ("plot", "runs", "--x", "bogus", "--out", "out"), ("--x", "bogus"), setup="run", item="9"),
    "plot-y-bogus": Case({}, ("plot", "runs", "--y", "bogus", "--out", "out"), ("--y", "bogus"), setup="run", item="9"),
    "plot-a-file": Case({"notes.txt": "x"}, ("plot", "notes.txt", "--out", "out"), ("notes.txt", "is a file"), item="9"),
    "plot-folder-not-a-run": Case({"empty/x.txt": "x"}, ("plot", "empty", "--out", "out"), ("empty", "not a run folder"),
                                  item="9"),
    # ---- LM: validated before any model is built (item 7) --------------------------------------------------------
    "lm-lr-string": Case({"spec.yaml": lm_spec(train="{iterations: 1, batch: 8, minibatch: 4, lr: fast}")}, lm_case(),
                         ("train.lr",), track="lm", item="7"),
    "lm-hidden-not-divisible": Case({"spec.yaml": lm_spec(model="{name: 'tiny:gpt2', hidden: 30, layers: 2, heads: 4}")},
                                    lm_case(), ("model.hidden", "heads"), track="lm", item="7"),
    "lm-hidden-negative": Case({"spec.yaml": lm_spec(model="{name: 'tiny:gpt2', hidden: -32, layers: 2, heads: 2}")},
                               lm_case(), ("model.hidden",), track="lm", item="7"),
    "lm-layers-zero": Case({"spec.yaml": lm_spec(model="{name: 'tiny:gpt2', hidden: 32, layers: 0, heads: 2}")},
                           lm_case(), ("model.layers",), track="lm", item="7"),
    "lm-heads-string": Case({"spec.yaml": lm_spec(model="{name: 'tiny:gpt2', hidden: 32, layers: 2, heads: two}")},
                            lm_case(), ("model.heads",), track="lm", item="7"),
    "lm-dtype-int8": Case({"spec.yaml": lm_spec(model="{name: 'tiny:gpt2', hidden: 32, layers: 2, heads: 2, "
                                                "dtype: int8}")},
                          lm_case(), ("model.dtype", "float32"), track="lm", item="7"),
    "lm-hidden-huge": Case({"spec.yaml": lm_spec(model="{name: 'tiny:gpt2', hidden: 1000000, layers: 2, heads: 2}")},
                           lm_case(), ("model", "GiB"), track="lm", item="8"),
    "lm-lora-alpha-string": Case({"spec.yaml": lm_spec(extra="lora: {r: 4, alpha: big}\n")}, lm_case(), ("lora.alpha",),
                                 track="lm", item="7"),
    "lm-lora-dropout-2": Case({"spec.yaml": lm_spec(extra="lora: {r: 4, dropout: 2}\n")}, lm_case(),
                              ("lora.dropout", "[0, 1)"), track="lm", item="7"),
    "lm-lora-target-missing": Case({"spec.yaml": lm_spec(extra="lora: {r: 4, target_modules: [q_proj]}\n")}, lm_case(),
                                   ("lora.target_modules", "q_proj", "c_attn"), track="lm", item="7"),
    "lm-lora-targets-string-list": Case({"spec.yaml": lm_spec(extra="lora: {r: 4, target_modules: 3}\n")}, lm_case(),
                                        ("lora.target_modules",), track="lm", item="7"),
    "lm-min-len-above-max": Case({"spec.yaml": lm_spec(prompts="{kind: toy, count: 8, min_len: 5, max_len: 2}")},
                                 lm_case(), ("prompts.min_len", "max_len"), track="lm", item="7"),
    "lm-min-len-zero": Case({"spec.yaml": lm_spec(prompts="{kind: toy, count: 8, min_len: 0}")}, lm_case(),
                            ("prompts.min_len",), track="lm", item="7"),
    "lm-reward-module-missing": Case({"spec.yaml": lm_spec(reward="{kind: function, module: 'no_such_pkg.mod:fn'}")},
                                     lm_case(), ("reward.module", "no_such_pkg"), track="lm", item="7"),
    "lm-reward-module-no-function": Case({"spec.yaml": lm_spec(reward="{kind: function, module: 'json:no_such_fn'}")},
                                         lm_case(), ("reward.module", "no_such_fn"), track="lm", item="7"),
    "lm-reward-module-form": Case({"spec.yaml": lm_spec(reward="{kind: function, module: 'justaname'}")},
                                  lm_case(), ("reward.module", "pkg.mod:fn"), track="lm", item="7"),
    "lm-hub-name-offline": Case({"spec.yaml": lm_spec(model="EleutherAI/pythia-160m-deduped")}, lm_case(),
                                ("model", "EleutherAI/pythia-160m-deduped", "offline"), track="lm", item="7"),
    "lm-jsonl-invalid-utf8": Case({"spec.yaml": lm_spec(prompts="{file: p.jsonl}"),
                                   "p.jsonl": b'{"prompt": "caf\xe9"}\n'}, lm_case(), ("p.jsonl", "UTF-8", "line 1"),
                                  track="lm", item="7"),
    "lm-out-under-a-file": Case({"spec.yaml": lm_spec(), "afile": "x"},
                                ("llm", "run", "spec.yaml", "--out", "afile/run", "--quiet"), ("--out", "afile"),
                                track="lm", item="7", out="afile/run"),
    "lm-reward-token-misspelt": Case({"spec.yaml": lm_spec(reward="{kind: function, name: count_token, token: goood}")},
                                     lm_case(), ("reward.token", "goood"), track="lm", item="7"),
    "lm-reward-token-not-a-word": Case({"spec.yaml": lm_spec(reward="{kind: function, name: count_token, token: 3}")},
                                    lm_case(), ("reward.token",), track="lm", item="7"),
    "lm-seeds-2-to-70": Case({"spec.yaml": lm_spec(extra="seeds: 1180591620717411303424\n")}, lm_case(), ("seeds",),
                             track="lm", item="8"),
    "lm-prompts-count-huge": Case({"spec.yaml": lm_spec(prompts="{kind: toy, count: 100000000000}")}, lm_case(),
                                  ("prompts.count", "GiB"), track="lm", item="8"),
    "lm-tokenizer-missing": Case({"spec.yaml": lm_spec(model="{name: 'tiny:gpt2', tokenizer: nowhere}")}, lm_case(),
                                 ("model.tokenizer", "nowhere"), track="lm", item="7"),
    "lm-model-seed-negative": Case({"spec.yaml": lm_spec(model="{name: 'tiny:gpt2', seed: -1}")}, lm_case(),
                                   ("model.seed",), track="lm", item="7"),
    "lm-reward-model-hidden-bad": Case({"spec.yaml": lm_spec(reward="{kind: model, name: 'tiny:gpt2', hidden: 30, "
                                                             "heads: 4}")},
                                       lm_case(), ("reward.hidden", "heads"), track="lm", item="7"),
    "lm-random-init-string": Case({"spec.yaml": lm_spec(model="{name: 'tiny:gpt2', random_init: maybe}")}, lm_case(),
                                  ("model.random_init",), track="lm", item="7"),
}


# ---------------------------------------------------------------------------------------------------------------
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
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def make_run_folder(root: Path) -> None:
    """A finished two-iteration bandit run folder ``root/runs`` (for the plot cases)."""
    from testbed.cli import main

    (root / "ok.yaml").write_text(bandit_spec(algorithms="[{name: rebel, eta: [1, 2]}]"))
    assert main(["run", str(root / "ok.yaml"), "--out", str(root / "runs"), "--quiet"]) == 0
    (root / "ok.yaml").unlink()


def classify(rc: int | None, stdout: str, stderr: str, case: Case, before: list[str], after: list[str]) -> str:
    if rc == 0:
        return "accepted silently"
    if rc != 2:
        return "exit 1"
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    clean = (len(lines) == 1 and lines[0].startswith("testbed: error:") and "Traceback" not in stderr
             and all(s in lines[0] for s in case.expect) and after == before)
    return "clean" if clean else "unclear"


def census(ids: list[str] | None = None, timeout: float = 180) -> dict[str, str]:
    import tempfile

    out = {}
    env = dict(os.environ, PYTHONIOENCODING="utf-8", HF_HUB_OFFLINE="1", MPLBACKEND="Agg")
    for cid in ids or list(CASES):
        case = CASES[cid]
        with tempfile.TemporaryDirectory() as d:
            root = Path(d)
            if case.setup == "run":
                make_run_folder(root)
            write_files(root, case.files)
            before = listing(root)
            try:
                p = subprocess.run([sys.executable, "-m", "testbed.cli", *case.argv], cwd=root, capture_output=True,
                                   text=True, encoding="utf-8", errors="replace", env=env, timeout=timeout)
                rc, so, se = p.returncode, p.stdout, p.stderr
            except subprocess.TimeoutExpired:
                rc, so, se = None, "", "time-out"
            out[cid] = classify(rc, so, se, case, before, listing(root))
            last = (se.strip().splitlines() or [""])[-1][:160]
            print(f"{cid:32s} {out[cid]:18s} rc={rc} {last}", flush=True)
    return out


if __name__ == "__main__":
    from collections import Counter

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    result = census(sys.argv[1:] or None)
    print(json.dumps(dict(Counter(result.values())), indent=1))
    print(json.dumps(Counter(CASES[c].track for c in result), indent=1))
