"""LoRA through peft, and switching it on and off per call without touching ``requires_grad``.

peft's ``disable_adapter()`` also flips ``requires_grad`` of the LoRA weights, which must not happen
in the middle of a step whose graph already uses them. Here the switch sets only each LoRA layer's
``_disable_adapters`` flag. Gradient checkpointing recomputes a layer during backward, when the flag
may have another value than during forward; ``checkpoint_context`` makes the recomputation run with
the value the forward had (torch's non-reentrant checkpoint ``context_fn``).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass
class LoraSettings:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )


def attach_lora(model: nn.Module, lora: LoraSettings) -> nn.Module:
    from peft import LoraConfig, get_peft_model

    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [t for t in lora.target_modules if t not in present]
    if missing:
        from data_prep.errors import UserError

        raise UserError(
            f"model.lora.target_modules: {', '.join(missing)} not found in {type(model).__name__} "
            f"(its linear layers: {', '.join(sorted(n for n in present if n.endswith('proj')))})"
        )
    config = LoraConfig(
        r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=list(lora.target_modules), bias="none"
    )
    return get_peft_model(model, config)


def lora_layers(model: nn.Module) -> list[nn.Module]:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [m for m in model.modules() if isinstance(m, BaseTunerLayer)]


class AdapterSwitch:
    """Turns the LoRA layers of one model on or off; remembers the current state for checkpointing."""

    def __init__(self, model: nn.Module):
        self.layers = lora_layers(model)
        self.enabled = True

    def set(self, enabled: bool) -> None:
        if enabled != self.enabled:
            for layer in self.layers:
                layer._disable_adapters = not enabled
            self.enabled = enabled

    @contextlib.contextmanager
    def __call__(self, enabled: bool):
        before = self.enabled
        self.set(enabled)
        try:
            yield
        finally:
            self.set(before)

    def checkpoint_context(self):
        """``context_fn`` for torch.utils.checkpoint: recompute with the adapter state of the forward."""
        state = self.enabled
        return contextlib.nullcontext(), self(state)


def enable_gradient_checkpointing(model: nn.Module, switch: AdapterSwitch) -> None:
    """Recomputation during backward runs outside the forward's ``with`` blocks: give it the forward's
    adapter state and the forward's dropout row seeds, or its masks (and so its gradients) would differ."""
    from .row_dropout import row_seeds_checkpoint_context

    def context_fn():
        _, adapters = switch.checkpoint_context()
        _, seeds = row_seeds_checkpoint_context()

        @contextlib.contextmanager
        def recompute():
            with adapters, seeds:
                yield

        return contextlib.nullcontext(), recompute()

    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False, "context_fn": context_fn})


def trainable_parameters(model: nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]
