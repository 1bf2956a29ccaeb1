"""PPO's critic on an LM: a value head on its own copy of the policy backbone (LoRA-adapted when the
policy is), and the module that holds policy and critic so one optimiser and one DDP wrapper cover both
(as TRL does)."""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from testbed.llm.policy import forward_logits, joined_inputs


class ValueModel(nn.Module):
    """A critic: a transformer backbone and a linear value head, V at every position."""

    def __init__(self, backbone: nn.Module, hidden: int):
        super().__init__()
        self.backbone = backbone
        # float32 (a float64 model: float64, so a float64 run stays float64 throughout)
        self.head = nn.Linear(hidden, 1, dtype=torch.promote_types(next(backbone.parameters()).dtype, torch.float32))
        nn.init.normal_(self.head.weight, std=1 / np.sqrt(hidden + 1))
        nn.init.zeros_(self.head.bias)

    def forward(self, **inputs):
        """V at every position of a batch's :func:`~testbed.llm.policy.padded_inputs`."""
        h = self.backbone(**inputs).last_hidden_state
        v = self.head(h)[..., 0]
        return v.to(torch.promote_types(v.dtype, torch.float32))


def make_critic(base_causal_lm, lora: dict | None) -> ValueModel:
    """A value model on a copy of ``base_causal_lm``'s backbone (before any LoRA), LoRA-adapted if asked."""
    backbone = copy.deepcopy(getattr(base_causal_lm, base_causal_lm.base_model_prefix))
    if lora:
        from peft import LoraConfig, get_peft_model
        backbone = get_peft_model(backbone, LoraConfig(r=lora["r"], lora_alpha=lora["alpha"], lora_dropout=lora["dropout"],
                                                       target_modules=lora.get("target_modules") or "all-linear"))
    hidden = base_causal_lm.config.get_text_config().hidden_size
    return ValueModel(backbone, hidden)


class PolicyAndValue(nn.Module):
    """Policy and critic in one module, so one optimiser and one DDP wrapper cover both (as TRL does)."""

    def __init__(self, policy: nn.Module, critic: ValueModel):
        super().__init__()
        self.policy, self.critic = policy, critic

    def forward(self, query, query_mask, response, resp_mask):
        inputs = joined_inputs(query, query_mask, response, resp_mask)
        logits = forward_logits(self.policy, query, query_mask, response, resp_mask, inputs)
        v = self.critic(**inputs)
        Q = query.shape[1]
        return logits, v[:, Q - 1:-1]
