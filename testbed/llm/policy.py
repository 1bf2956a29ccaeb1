"""The causal-LM policy: sampling with ``generate`` and differentiable sequence log-probabilities.

The conventions are those of the official REBEL TL;DR code (DESIGN.md §3), shared with TRL's
PPO/RLOO trainers:

- prompts are left-padded (right-padded prompts are repacked to the left first), so every
  response starts at the same column;
- responses have a fixed length ``max_new_tokens``; tokens after the first EOS are replaced by
  padding (:func:`truncate_after_eos`);
- the log-prob of a response is the sum of its token log-probs up to and including the first EOS
  (:func:`response_mask`), with the logits divided by the sampling temperature;
- position ids count real tokens only, so padding never shifts positions: a padded batch gives the
  log-probs of each sequence run alone;
- padding never reaches a model as an input id: masked positions go in as id 0 (as the official code's
  ``masked_fill(..., ~attention_mask, 0)``), so a pad token added to a tokenizer without resizing the
  embeddings (a tokenizer with no pad token: its id is the vocabulary size) is never looked up;
- the reference policy is the same model with its LoRA adapter disabled (no second copy), a frozen
  copy for a full fine-tune, or log-probs computed once in advance (offline DPO).
"""

from __future__ import annotations

import contextlib
import copy

import torch


def left_pad(ids: torch.Tensor, mask: torch.Tensor, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Move each row's real tokens (mask 1) to the right end; pads (``pad_id``, mask 0) to the left."""
    if ids.shape != mask.shape or ids.ndim != 2:
        raise ValueError(f"ids and mask must share a shape [B, T] (got {tuple(ids.shape)}, {tuple(mask.shape)})")
    m = mask.bool()
    # stable sort with pads first keeps the order of the real tokens
    order = torch.sort((m).to(torch.int8), dim=1, stable=True).indices
    out_ids = torch.gather(torch.where(m, ids, torch.full_like(ids, pad_id)), 1, order)
    return out_ids, torch.gather(m, 1, order).to(mask.dtype)


def first_eos_index(response: torch.Tensor, eos_id: int) -> torch.Tensor:
    """Index of the first EOS per row, or the length L where a row has none. Shape [B]."""
    L = response.shape[1]
    is_eos = response == eos_id
    idx = torch.where(is_eos, torch.arange(L, device=response.device), L)
    return idx.min(dim=1).values


def truncate_after_eos(response: torch.Tensor, eos_id: int, pad_id: int) -> torch.Tensor:
    """Replace every token after the first EOS with ``pad_id`` (the EOS itself stays)."""
    L = response.shape[1]
    after = torch.arange(L, device=response.device)[None, :] > first_eos_index(response, eos_id)[:, None]
    return torch.where(after, torch.full_like(response, pad_id), response)


def response_mask(response: torch.Tensor, eos_id: int) -> torch.Tensor:
    """1 on the response tokens that count: up to and including the first EOS (all L if none). [B, L]."""
    L = response.shape[1]
    return (torch.arange(L, device=response.device)[None, :] <= first_eos_index(response, eos_id)[:, None]).long()


def has_eos(response: torch.Tensor, eos_id: int) -> torch.Tensor:
    return (response == eos_id).any(dim=1)


def masked_ids(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``ids`` with the masked-out positions set to 0 (a valid id however the pad token was added)."""
    return ids.masked_fill(~mask.bool(), 0)


def padded_inputs(ids: torch.Tensor, mask: torch.Tensor) -> dict:
    """Forward arguments for padded ids: pads go in as id 0 (never looked up), masked out of attention; position ids
    count real tokens only."""
    pos = (mask.long().cumsum(1) - 1).clamp(min=0)
    return dict(input_ids=masked_ids(ids, mask), attention_mask=mask, position_ids=pos, use_cache=False)


def joined_inputs(query: torch.Tensor, query_mask: torch.Tensor, response: torch.Tensor, resp_mask: torch.Tensor) -> dict:
    """:func:`padded_inputs` of query + response, one sequence per row [B, Q + L] (``query`` left-padded)."""
    return padded_inputs(torch.cat([query, response], dim=1), torch.cat([query_mask, resp_mask.to(query_mask.dtype)], dim=1))


def forward_logits(model, query: torch.Tensor, query_mask: torch.Tensor, response: torch.Tensor,
                   resp_mask: torch.Tensor, inputs: dict | None = None) -> torch.Tensor:
    """Logits predicting each response token: [B, L, V]. ``query`` must be left-padded. ``inputs``: the batch's
    :func:`joined_inputs`, when the caller has built them already."""
    inputs = inputs if inputs is not None else joined_inputs(query, query_mask, response, resp_mask)
    # only the L + 1 last positions go through the LM head (logits_to_keep): the rest are never read
    return model(**inputs, logits_to_keep=response.shape[1] + 1).logits[:, :-1]


def token_logprobs(logits: torch.Tensor, response: torch.Tensor, temperature: float,
                   suppress: int | None = None, mask: torch.Tensor | None = None) -> torch.Tensor:
    """ln softmax(logits/temperature) at the response tokens, [B, L] (float32 or wider).

    ``suppress``: a token id that is never sampled (the pad token, when it differs from EOS): its
    logit is -inf here and in ``generate``, so the two use one distribution. ``mask``: positions
    with mask 0 (after the first EOS) are set to exactly 0.
    """
    lg = _suppressed(logits.to(torch.promote_types(logits.dtype, torch.float32)) / temperature, suppress)
    idx = response if mask is None else masked_ids(response, mask)  # a pad after EOS may be out of the vocabulary
    lp = torch.gather(lg, 2, idx[..., None])[..., 0] - torch.logsumexp(lg, dim=-1)
    return lp if mask is None else torch.where(mask.bool(), lp, torch.zeros_like(lp))


def _suppressed(lg: torch.Tensor, token: int | None) -> torch.Tensor:
    if token is None:
        return lg
    lg = lg.clone()
    lg[..., token] = float("-inf")
    return lg


def unwrap(model):
    """The model inside a DDP / accelerate wrapper."""
    return getattr(model, "module", model)


def vocabulary_size(model, default: int | None = None) -> int | None:
    """The number of token ids the model embeds: its input embedding's rows, else ``config.vocab_size``, else
    ``default`` (a toy model without either: every id is taken to be in range)."""
    get = getattr(model, "get_input_embeddings", None)
    embed = get() if get is not None else None
    if embed is not None:
        return embed.num_embeddings
    return getattr(getattr(model, "config", None), "vocab_size", None) or default


class LMPolicy:
    """A causal LM as a policy over responses.

    ``model`` may be a ``peft`` model (LoRA): then ``ref="adapter"`` makes pi_ref the same model with
    the adapter disabled. ``ref="copy"`` keeps a frozen copy (full fine-tune); ``ref=None`` has none
    (log-probs of pi_ref are then supplied by the caller, e.g. precomputed for a dataset).
    """

    def __init__(self, model, tokenizer, *, temperature: float = 0.7, top_k: int = 0, top_p: float = 1.0,
                 max_new_tokens: int = 16, ref: str | None = "auto"):
        self.model, self.tokenizer = model, tokenizer
        self.temperature, self.top_k, self.top_p, self.max_new_tokens = temperature, top_k, top_p, max_new_tokens
        self.pad_id, self.eos_id = tokenizer.pad_token_id, tokenizer.eos_token_id
        # a pad id outside the model's vocabulary (added to a tokenizer without one) can never be sampled
        self.in_vocab_pad = self.pad_id < vocabulary_size(unwrap(model), self.pad_id + 1)
        self.suppress = self.pad_id if self.pad_id != self.eos_id and self.in_vocab_pad else None
        if ref == "auto":
            ref = "adapter" if is_peft(model) else "copy"
        self.ref_kind = ref
        self.ref_model = None
        if ref == "copy":
            self.ref_model = copy.deepcopy(unwrap(model)).eval().requires_grad_(False)
        elif ref == "adapter" and not is_peft(model):
            raise ValueError("ref='adapter' needs a peft (LoRA) model")

    @property
    def device(self) -> torch.device:
        return next(unwrap(self.model).parameters()).device

    def encode(self, prompts: list[str], max_length: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokenise prompts, left-padded: (ids [B, Q], mask [B, Q])."""
        self.tokenizer.padding_side = "left"
        enc = self.tokenizer(prompts, return_tensors="pt", padding=True, truncation=max_length is not None,
                             max_length=max_length)
        return enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device)

    @torch.no_grad()
    def generate(self, query: torch.Tensor, query_mask: torch.Tensor, sampler=None) -> torch.Tensor:
        """Sample one response per row: [B, max_new_tokens], tokens after the first EOS set to padding.

        Uses the torch global RNG (seed it for reproducibility). Generation stops at EOS per row
        (finished rows are padded), which samples the same distribution as a fixed-length
        generation followed by truncation after the first EOS. ``sampler``: logits processors that
        sample by themselves (:func:`testbed.llm.evaluation.row_sampler`), decoded greedily.
        """
        query, query_mask = left_pad(query, query_mask, self.pad_id)
        m = unwrap(self.model)
        was_training = m.training
        m.eval()
        kw = dict(do_sample=True, temperature=self.temperature, top_k=self.top_k, top_p=self.top_p,
                  max_new_tokens=self.max_new_tokens, min_new_tokens=0,
                  pad_token_id=self.pad_id if self.in_vocab_pad else self.eos_id,  # fed back for finished rows
                  eos_token_id=self.eos_id)
        if self.suppress is not None:
            kw["suppress_tokens"] = [self.suppress]
        if sampler is not None:
            kw.update(do_sample=False, temperature=None, top_k=None, top_p=None, logits_processor=sampler)
        # sampling follows the spec only: a model folder's generation_config.json (repetition_penalty,
        # no_repeat_ngram_size, bad_words_ids, top_k, ...) would change sampling but not the log-probs, so
        # generate sees a blank one (transformers fills unset fields from the model's, then global defaults)
        from transformers import GenerationConfig

        holder = m.get_base_model() if is_peft(m) else m  # a peft model generates with its base model's config
        saved, holder.generation_config = holder.generation_config, GenerationConfig()
        try:
            out = m.generate(input_ids=masked_ids(query, query_mask), attention_mask=query_mask, **kw)
        finally:
            holder.generation_config = saved
        m.train(was_training)
        resp = out[:, query.shape[1]:]
        L = self.max_new_tokens
        if resp.shape[1] < L:
            resp = torch.cat([resp, torch.full((resp.shape[0], L - resp.shape[1]), self.pad_id, dtype=resp.dtype,
                                               device=resp.device)], dim=1)
        return truncate_after_eos(resp, self.eos_id, self.pad_id)

    def logprobs(self, query: torch.Tensor, query_mask: torch.Tensor, response: torch.Tensor, model=None):
        """Per-token log-probs [B, L] of ``response`` (masked to 0 after the first EOS) and the mask.

        Differentiable through ``model`` (default: the policy).
        """
        query, query_mask = left_pad(query, query_mask, self.pad_id)
        mask = response_mask(response, self.eos_id)
        logits = forward_logits(model if model is not None else self.model, query, query_mask, response, mask)
        lp = token_logprobs(logits, response, self.temperature, self.suppress, mask)
        return lp, mask

    def seq_logprob(self, query, query_mask, response, model=None) -> torch.Tensor:
        """ln pi(y|x) = sum of token log-probs up to and including the first EOS. Shape [B]."""
        lp, _ = self.logprobs(query, query_mask, response, model)
        return lp.sum(1)

    @torch.no_grad()
    def ref_logprobs(self, query, query_mask, response) -> torch.Tensor:
        """Per-token log-probs [B, L] under pi_ref (adapter disabled, or the frozen copy)."""
        if self.ref_kind == "adapter":
            with unwrap(self.model).disable_adapter():
                return self.logprobs(query, query_mask, response)[0]
        if self.ref_kind == "copy":
            return self.logprobs(query, query_mask, response, model=self.ref_model)[0]
        raise ValueError("this policy has no reference model; pass precomputed reference log-probs")

    def decode(self, ids: torch.Tensor) -> list[str]:
        return self.tokenizer.batch_decode(ids, skip_special_tokens=False)


def is_peft(model) -> bool:
    return hasattr(unwrap(model), "disable_adapter")


def apply_lora(model, r: int = 8, alpha: float = 16.0, dropout: float = 0.0, target_modules=None):
    """Wrap ``model`` with a LoRA adapter (peft); ``target_modules`` default: ``"all-linear"`` (the official REBEL
    code uses peft's per-architecture default, e.g. GPT-NeoX ``[query_key_value]``: give it as a list)."""
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules or "all-linear",
                     bias="none")
    return get_peft_model(model, cfg)


@contextlib.contextmanager
def logprob_temperature(policy: LMPolicy, temperature: float):
    """Log-probs of ``policy`` at ``temperature`` inside the block (0: its sampling temperature)."""
    old = policy.temperature
    policy.temperature = temperature or old
    try:
        yield
    finally:
        policy.temperature = old


@contextlib.contextmanager
def eval_mode(model):
    m = unwrap(model)
    was = m.training
    m.eval()
    try:
        yield
    finally:
        m.train(was)
