"""Gradient checkpointing of a ``transformers`` causal LM (``model.gradient_checkpointing: true``).

``transformers``' own implementation (``gradient_checkpointing_enable``, non-reentrant ``torch.utils.checkpoint``):
each decoder layer keeps only its input during the forward pass and recomputes its activations in the backward
pass, so the activations held drop from ~34·s·b·h bytes per layer to s·b·h values per layer plus one layer's
(:mod:`testbed.llm.memory`), for a second forward pass of the layers' cost. The loss and the gradients are the same.

``transformers`` checkpoints a layer only while that layer is in training mode; the testbed's policies stay in eval
mode (dropout off, as the official REBEL code), so a forward pre-hook puts each decoder layer (the layer module
itself, not its dropout children) in training mode exactly when autograd records (``torch.is_grad_enabled()``):
log-probs for an update are checkpointed, generation and ``no_grad`` scoring are not.
"""

from __future__ import annotations

from testbed.errors import InputError


def _train_when_recording(module, args) -> None:
    import torch
    module.training = torch.is_grad_enabled()


def enable_gradient_checkpointing(model, where: str = "model.gradient_checkpointing") -> int:
    """Turn on checkpointing of every decoder layer of ``model``; return the number of layers checkpointed."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    if not getattr(model, "supports_gradient_checkpointing", False):
        raise InputError(f"{where}: {type(model).__name__} does not support gradient checkpointing")
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    layers = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]
    if not layers:
        raise InputError(f"{where}: {type(model).__name__} has no checkpointable decoder layers")
    for m in layers:
        m.register_forward_pre_hook(_train_when_recording)
    return len(layers)
