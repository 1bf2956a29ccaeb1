"""Tiny models and a toy task built offline: a word-level tokenizer, few-layer GPT-2/Llama/Qwen2 configs.

Nothing here downloads anything: the tokenizer is made with the ``tokenizers`` library from a fixed
word list and the models are built from configs with random weights (seeded). The toy task's
prompts are short random word strings; its programmatic rewards live in :mod:`testbed.llm.rewards`.
"""

from __future__ import annotations

import numpy as np
import torch

PAD, EOS, BOS = "[PAD]", "[EOS]", "[BOS]"
WORDS = ("good", "bad", "red", "blue", "cat", "dog", "sun", "moon", "one", "two", "up", "down")
"""The toy vocabulary after the three special tokens (ids 0, 1, 2)."""

TINY_ARCHS = ("gpt2", "llama", "qwen2")


def toy_tokenizer(words: tuple[str, ...] = WORDS):
    """A word-level ``PreTrainedTokenizerFast``: [PAD]=0, [EOS]=1, [BOS]=2, then ``words``; left padding."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate((PAD, EOS, BOS, *words))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=PAD))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    out = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD, eos_token=EOS, bos_token=BOS, unk_token=PAD)
    out.padding_side = "left"
    return out


def tiny_config(arch: str = "gpt2", vocab_size: int = len(WORDS) + 3, hidden: int = 32, layers: int = 2,
                heads: int = 2, positions: int = 64, num_labels: int = 1):
    """A few-layer config of ``arch`` (gpt2 | llama | qwen2) with the toy tokenizer's special ids."""
    from transformers import GPT2Config, LlamaConfig, Qwen2Config

    ids = dict(pad_token_id=0, eos_token_id=1, bos_token_id=2, vocab_size=vocab_size, num_labels=num_labels)
    if arch == "gpt2":
        return GPT2Config(n_embd=hidden, n_layer=layers, n_head=heads, n_positions=positions, resid_pdrop=0.0,
                          embd_pdrop=0.0, attn_pdrop=0.0, **ids)
    cls = {"llama": LlamaConfig, "qwen2": Qwen2Config}.get(arch)
    if cls is None:
        raise ValueError(f"arch must be one of {TINY_ARCHS} (got {arch!r})")
    return cls(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers, num_attention_heads=heads,
               num_key_value_heads=heads, max_position_embeddings=positions, tie_word_embeddings=False, **ids)


def tiny_causal_lm(arch: str = "gpt2", seed: int = 0, **kw):
    """A randomly initialised (seeded) causal LM from :func:`tiny_config`, in eval mode (no dropout)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(tiny_config(arch, **kw), attn_implementation="eager").eval()


def tiny_reward_model(arch: str = "gpt2", seed: int = 0, **kw):
    """A randomly initialised sequence classifier (one score) from :func:`tiny_config`."""
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(seed)
    return AutoModelForSequenceClassification.from_config(tiny_config(arch, num_labels=1, **kw),
                                                          attn_implementation="eager").eval()


def toy_prompts(n: int, seed: int = 0, min_len: int = 2, max_len: int = 4, words: tuple[str, ...] = WORDS) -> list[str]:
    """``n`` prompts of ``min_len``..``max_len`` random words (seeded), of varying length so batches need padding."""
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(words, size=rng.integers(min_len, max_len + 1))) for _ in range(n)]


class TableLM(torch.nn.Module):
    """A causal LM whose parameters are a logit table: the next-token logits after token i are ``table[i]``.

    With one-token prompts and one-token responses it *is* a tabular softmax policy (context = the prompt
    token, action = the response token), so an update on it can be compared with the same algorithm's
    update on the equivalent tabular bandit (tests/test_cross_track.py)."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.table = torch.nn.Parameter(torch.as_tensor(table, dtype=torch.float64).clone())

    def forward(self, input_ids, attention_mask=None, position_ids=None, use_cache=False, logits_to_keep=0, **kw):
        from transformers.modeling_outputs import CausalLMOutput

        logits = self.table[input_ids]
        return CausalLMOutput(logits=logits[:, -logits_to_keep:] if logits_to_keep else logits)


class TableCritic(torch.nn.Module):
    """A value table over tokens (zero at init): V at each position is ``values[token]`` — the bandit PPO's
    value table for one-token prompts."""

    def __init__(self, vocab: int):
        super().__init__()
        self.values = torch.nn.Parameter(torch.zeros(vocab, dtype=torch.float64))

    def forward(self, input_ids, attention_mask=None, position_ids=None, use_cache=False):
        """V at every position of a batch's :func:`~testbed.llm.policy.padded_inputs` (a critic's interface)."""
        return self.values[input_ids]
