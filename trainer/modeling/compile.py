"""``torch.compile`` of the decoder, one transformer block at a time (``train.compile`` / ``eval mteb --compile``).

Per-block compilation, as torchtitan does it: every block runs the same code, so the 30 or 32 blocks share
one compiled graph per distinct call (E with LoRA on and bidirectional, D and the teacher with LoRA off and
causal, forward and backward) and compile time does not grow with depth. Inside a block inductor fuses what
eager runs as separate passes over memory: RMSNorm, SiLU·mul, rotary, and the row-seeded dropout masks
(about 35 integer passes each in eager). The embedding, the final norm, the memory tokens and the losses
stay eager. Shapes are dynamic from the first call (``dynamic=True``), so varying lengths and batch sizes
reuse the graphs instead of compiling one per shape; ``compile_stats`` counts what was compiled, so that a
test and the trainer's log can show that the count stays bounded.

What is compiled is the block's own ``forward``, under transformers' gradient-checkpointing wrapper, not
around it: torch's checkpoint inside a compiled graph accepts only dispatch modes as ``context_fn``, while
ours restores the forward's adapter state and dropout row seeds for the recomputation (adapters.py), so the
checkpoint stays eager and calls the compiled forward, once in the forward pass and once in the recomputation.
"""
from __future__ import annotations

import functools

import torch
from torch import nn

# Keyword arguments a block must not get under checkpointing (transformers drops them the same way: the
# recomputation would write the cache a second time). Training never passes a cache; this keeps it so.
_CACHE_KWARGS = ("past_key_values", "past_key_value", "layer_past", "cache")


def decoder_blocks(decoder: nn.Module) -> list[nn.Module]:
    """The decoder stack's transformer blocks (``layers`` on every Llama-like model transformers builds)."""
    layers = getattr(decoder, "layers", None)
    if layers is None:
        from data_prep.errors import UserError

        raise UserError(f"compile: {type(decoder).__name__} has no .layers to compile block by block")
    return list(layers)


def _plain_forward(block: nn.Module):
    """The class's forward without transformers' checkpointing wrapper (``functools.wraps`` keeps it)."""
    forward = type(block).forward
    return getattr(forward, "__wrapped__", forward)


def _checkpointed(block: nn.Module, compiled):
    """The block's forward: the compiled one, under gradient checkpointing when the block has it on."""

    @functools.wraps(compiled)
    def forward(*args, **kwargs):
        if getattr(block, "gradient_checkpointing", False) and block.training and torch.is_grad_enabled():
            kwargs = {k: (None if k in _CACHE_KWARGS else v) for k, v in kwargs.items() if k != "use_cache"}
            return block._gradient_checkpointing_func(functools.partial(compiled, **kwargs), *args)
        return compiled(*args, **kwargs)

    forward.llm2comp_compiled = True
    return forward


def compile_blocks(decoder: nn.Module, dynamic: bool = True) -> int:
    """Compile each block's forward in place (an instance attribute: the module keeps its name, parameters and
    state dict, so checkpoints, peft and DeepSpeed see the same model). Returns how many were compiled."""
    blocks = decoder_blocks(decoder)
    for block in blocks:
        if not getattr(block.forward, "llm2comp_compiled", False):
            compiled = torch.compile(_plain_forward(block).__get__(block, type(block)), dynamic=dynamic)
            block.forward = _checkpointed(block, compiled)
    return len(blocks)


def uncompile_blocks(decoder: nn.Module) -> None:
    """Eager again (the compiled graphs stay cached for a later ``compile_blocks``)."""
    for block in decoder_blocks(decoder):
        if getattr(block.forward, "llm2comp_compiled", False):
            del block.forward


def compiled_blocks(decoder: nn.Module) -> int:
    """How many of the decoder's blocks run compiled: the read-back that the setting took effect."""
    return sum(getattr(b.forward, "llm2comp_compiled", False) for b in decoder_blocks(decoder))


def compile_stats() -> dict:
    """What dynamo compiled so far in this process: frames compiled (one per distinct call signature and
    recompilation) and graph breaks; a count that grows with each new length means shapes are not dynamic."""
    from torch._dynamo.utils import counters

    return {"frames_compiled": int(counters["stats"]["unique_graphs"]),
            "graph_breaks": int(sum(counters["graph_break"].values()))}
