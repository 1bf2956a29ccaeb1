"""The TL;DR-style study's parts that need no real model: the generated posts, the oracle, the Wilson
interval, the Bradley–Terry reward model on embeddings, the per-run peak-memory window, and bad specs."""

import math

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")

from llm_helpers import toy_spec  # noqa: E402

from testbed.cli import main  # noqa: E402
from testbed.llm import tldr  # noqa: E402


def test_posts_are_seeded_and_the_prompt_gives_its_post_back():
    posts = tldr.make_posts(40, seed=3)
    assert posts == tldr.make_posts(40, seed=3)
    assert posts != tldr.make_posts(40, seed=4)
    assert len(set(posts)) == 40
    assert [tldr.post_of(p) for p in tldr.make_prompts(40, seed=3)] == posts
    assert all(35 <= len(p.split()) <= 90 for p in posts)


@pytest.mark.parametrize(("k", "n"), [(0, 10), (3, 10), (64, 128), (100, 128), (128, 128)])
def test_wilson_interval_matches_scipy(k, n):
    from scipy.stats import binomtest
    ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    lo, hi = tldr.wilson_interval(k, n)
    assert lo == pytest.approx(ci.low, abs=1e-12) and hi == pytest.approx(ci.high, abs=1e-12)


class FakeEmbedder:
    """Deterministic unit vectors per text (a stand-in for MiniLM with the same interface)."""

    dim = 16

    def __call__(self, texts):
        out = []
        for t in texts:
            g = np.random.default_rng(sum(ord(c) * (i + 1) for i, c in enumerate(t)) % 2**32)
            v = g.normal(size=self.dim)
            out.append(v / np.linalg.norm(v))
        return torch.tensor(np.array(out), dtype=torch.float32).reshape(len(texts), self.dim)


def test_oracle_score_is_cosine_minus_the_length_penalty():
    emb = FakeEmbedder()
    oracle = tldr.Oracle(emb, target_words=3, length_penalty=0.1)
    posts = ["a post about a cat", "another post", "third"]
    summ = ["cat post", "one two three four five six", ""]
    cos = [float(emb([p])[0] @ emb([s])[0]) for p, s in zip(posts, summ)]
    want = [cos[0], cos[1] - 0.1 * 3, -1.0]
    np.testing.assert_allclose(oracle.scores(posts, summ), want, atol=1e-6)


def test_bradley_terry_reward_model_recovers_a_linear_preference():
    """Pairs labelled by a (noise-free) linear score on the RM's own features: the fitted head ranks fresh pairs
    as the score does (logistic regression on separable data)."""
    from testbed.llm.rewards import train_bradley_terry
    from testbed.llm.toy import WORDS, toy_tokenizer

    tok = toy_tokenizer()
    emb = FakeEmbedder()
    rm = tldr.EmbeddingRewardModel(emb, tok, tok.pad_token_id, tok.eos_token_id)
    rng = np.random.default_rng(0)
    w = torch.tensor(rng.normal(size=2 * emb.dim), dtype=torch.float32)

    def batch(n):
        q, qm = [], []
        prompts = [" ".join(rng.choice(WORDS, 3)) for _ in range(n)]
        enc = tok(prompts, return_tensors="pt", padding=True)
        q, qm = enc["input_ids"], enc["attention_mask"]
        ys = [torch.tensor([tok.convert_tokens_to_ids(x) for x in rng.choice(WORDS, 4)] + [tok.eos_token_id])
              for _ in range(2 * n)]
        y1, y2 = torch.stack(ys[:n]), torch.stack(ys[n:])
        posts = tldr.prompt_texts(tok, q, qm)
        s1 = rm.features([tldr.post_of(p) for p in posts], tldr.response_texts(tok, y1, tok.eos_token_id)) @ w
        s2 = rm.features([tldr.post_of(p) for p in posts], tldr.response_texts(tok, y2, tok.eos_token_id)) @ w
        first = (s1 > s2)[:, None]
        return q, qm, torch.where(first, y1, y2), torch.where(first, y2, y1)

    q, qm, yc, yr = batch(300)
    losses = train_bradley_terry(rm, q, qm, yc, yr, epochs=60, lr=0.05, minibatch=50)
    assert losses[-1] < 0.5 * losses[0]  # the BT loss starts at ln 2 (zero head) and must fall
    q, qm, yc, yr = batch(200)
    with torch.no_grad():
        agree = (rm.score(q, qm, yc) > rm.score(q, qm, yr)).float().mean()
    assert agree >= 0.9


def test_peak_memory_window_sees_a_known_allocation():
    from testbed.llm.task import peak_memory_mb, reset_peak_memory

    base = reset_peak_memory()
    x = torch.ones(64 * 2**20 // 4 * 4)  # 256 MiB, touched
    del x
    peak = peak_memory_mb(base)
    assert 240 <= peak <= 400, peak
    base = reset_peak_memory()
    assert peak_memory_mb(base) < 60  # a fresh window forgets the freed allocation


def _bad(tmp_path, capsys, raw, message):
    import yaml
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(raw))
    assert main(["llm", "run", str(spec), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("testbed: error: ") and err.count("\n") == 1, err
    assert message in err, err
    assert not (tmp_path / "o").exists()


def test_preferences_dataset_needs_the_bradley_terry_pipeline(tmp_path, capsys):
    _bad(tmp_path, capsys, toy_spec({"name": "dpo", "mode": "offline", "dataset": "preferences"}),
         "dataset: 'preferences' (the pairs the pipeline labels) needs offline DPO and a reward of kind bradley_terry")


def test_sft_demonstrations_need_the_bradley_terry_pipeline(tmp_path, capsys):
    """SFT's ``dataset: preferences`` is the pipeline's oracle-chosen responses: without the pipeline, one line."""
    _bad(tmp_path, capsys, toy_spec({"name": "sft", "dataset": "preferences"}),
         "dataset: 'preferences' (the pipeline's oracle-chosen demonstrations) needs a reward of kind bradley_terry")


def test_sft_on_the_pipeline_reads_the_demonstrations():
    """With the pipeline, SFT keeps ``dataset: preferences`` (resolved to demonstrations.jsonl in the run folder)."""
    from testbed.llm.spec import PREFERENCES, parse_lm_spec

    raw = toy_spec({"name": "sft", "dataset": "preferences", "minibatch": 4})
    raw["reward"] = {"kind": "bradley_terry"}
    spec = parse_lm_spec(raw)
    assert [getattr(cfg, "dataset", None) for _, cfg, _ in spec.algorithms] == [PREFERENCES]


@pytest.mark.parametrize(("key", "value", "message"), [
    ("holdout", 1.0, "reward.holdout must be a fraction in [0, 1)"),
    ("pairs", 0, "reward.pairs"),
    ("oracle", "gpt4", "reward: unknown key(s) ['oracle']"),
])
def test_bad_bradley_terry_reward(tmp_path, capsys, key, value, message):
    raw = toy_spec({"name": "rebel"})
    raw["reward"] = {"kind": "bradley_terry", key: value}
    _bad(tmp_path, capsys, raw, message)


def test_quick_needs_llm(capsys):
    assert main(["reproduce", "--quick"]) == 2
    assert "--quick goes with --llm" in capsys.readouterr().err


def test_wilson_interval_is_nan_without_prompts():
    assert all(math.isnan(v) for v in tldr.wilson_interval(0, 0))


def test_llm_table_and_figures_from_a_run_folder(tmp_path):
    """The table's s/iteration, peak-memory ratio to PPO and win-rate cells come from metrics.csv as defined."""
    import csv
    import json

    from testbed.llm.train import LM_COLUMNS
    from testbed.plotting.llm import llm_table, plot_llm_reward_kl, plot_llm_winrate

    rows = []
    for run, peak, walls in (("rebel-0-s0", 600.0, [0.0, 10.0, 22.0, 31.0]), ("ppo-1-s0", 1000.0, [0.0, 5.0, 9.0, 13.0])):
        for t, w in enumerate(walls):
            r = {c: "" for c in LM_COLUMNS}
            r.update(run_id=run, problem="p", algorithm=run.split("-")[0], seed=0, iteration=t, wall_time=w,
                     peak_memory_mb=peak * (t + 1) / len(walls))
            if t:
                r.update({"objective/kl": 0.1 * t, "objective/scores": 0.2 * t})
            if t == len(walls) - 1:
                r.update({"eval/win_rate": 0.75, "eval/win_rate_lo": 0.6, "eval/win_rate_hi": 0.85, "eval/kl": 0.5,
                          "eval/rm_score": 0.4, "eval/words": 12.0})
            rows.append(r)
    with open(tmp_path / "metrics.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=LM_COLUMNS)
        w.writeheader()
        w.writerows(rows)
    (tmp_path / "config.yaml").write_text("name: demo\nprocesses: 1\ntrain: {minibatch: 8, grad_accum: 1}\nalgorithms: "
                                          "[{name: rebel, minibatch: 4, grad_accum: 2, sequences_per_item: 2},"
                                          " {name: ppo, grad_accum: 0, sequences_per_item: 1}]\n")
    (tmp_path / "meta.json").write_text(json.dumps({"seconds": {"rebel-0-s0": 40.0}}))
    text = llm_table(tmp_path, tmp_path / "t.md", wall_seconds=120).read_text()
    rebel = next(ln for ln in text.splitlines() if ln.startswith("| REBEL s0"))
    ppo = next(ln for ln in text.splitlines() if ln.startswith("| PPO s0"))
    assert "| REBEL | 1 (single seed: no interval) | 75.0% | 0.4 | 0.5 |" in text  # the table over seeds
    # (31 - 10)/2 s/iteration; minibatches of 4 pairs in 2 micro-batches = 4 sequences per backward; PPO's 8 in one
    assert "75.0% [60.0%, 85.0%]" in rebel and "| 600 | 0.60 | 4 | 10.5 | 40 |" in rebel
    assert "| 1000 | 1.00 | 8 | 4.0 |" in ppo and "2.0 min" in text
    assert plot_llm_reward_kl(tmp_path, tmp_path / "a.png").stat().st_size > 0
    assert plot_llm_winrate(tmp_path, tmp_path / "b.png").stat().st_size > 0


def test_llm_table_over_seeds_is_the_mean_with_a_t_interval(tmp_path):
    """Three seeds of one method: the mean and the 95% Student-t interval over seeds (scipy's t.interval)."""
    import csv

    from scipy import stats

    from testbed.llm.train import LM_COLUMNS
    from testbed.plotting.llm import llm_table, plot_llm_winrate

    wins, scores = [0.5, 0.625, 0.8125], [0.1, 0.4, 0.25]
    rows = []
    for seed, (w, sc) in enumerate(zip(wins, scores)):
        for t in (0, 1):
            r = {c: "" for c in LM_COLUMNS}
            r.update(run_id=f"rebel-0-s{seed}", problem="p", algorithm="rebel", seed=seed, iteration=t, wall_time=t,
                     peak_memory_mb=100.0)
            if t:
                r.update({"eval/win_rate": w, "eval/win_rate_lo": w - 0.1, "eval/win_rate_hi": w + 0.1, "eval/kl": 1.0,
                          "eval/rm_score": sc})
            rows.append(r)
    with open(tmp_path / "metrics.csv", "w", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=LM_COLUMNS)
        wr.writeheader()
        wr.writerows(rows)
    (tmp_path / "config.yaml").write_text("name: demo\n")
    text = llm_table(tmp_path, tmp_path / "t.md").read_text()
    lo, hi = stats.t.interval(0.95, 2, loc=np.mean(wins), scale=stats.sem(wins))
    slo, shi = stats.t.interval(0.95, 2, loc=np.mean(scores), scale=stats.sem(scores))
    assert (f"| REBEL | 3 | {np.mean(wins):.1%} [{lo:.1%}, {hi:.1%}] | {np.mean(scores):.3g} [{slo:.3g}, {shi:.3g}] |"
            in text), text
    assert plot_llm_winrate(tmp_path, tmp_path / "b.png").stat().st_size > 0
