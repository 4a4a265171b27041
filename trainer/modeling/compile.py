"""``torch.compile`` of the decoder, one transformer block at a time (``train.compile`` / ``eval mteb --compile``).

Per-block compilation, as torchtitan does it: every block runs the same code, so the 30 or 32 blocks share
one compiled graph per distinct call (E with LoRA on and bidirectional, D and the teacher with LoRA off and
causal, forward and backward) and compile time does not grow with depth. Inside a block inductor fuses what
eager runs as separate passes over memory: RMSNorm, SiLU·mul, rotary, and the row-seeded dropout masks
(about 35 integer passes each in eager). The embedding, the final norm, the memory tokens and the losses
stay eager. Shapes are dynamic from the first call (``dynamic=True``), so varying lengths and batch sizes
reuse the graphs instead of compiling one per shape; ``compile_stats`` counts what was compiled, so that a
test and the trainer's log can show that the count stays bounded.
"""
from __future__ import annotations

from torch import nn


def decoder_blocks(decoder: nn.Module) -> list[nn.Module]:
    """The decoder stack's transformer blocks (``layers`` on every Llama-like model transformers builds)."""
    layers = getattr(decoder, "layers", None)
    if layers is None:
        from data_prep.errors import UserError

        raise UserError(f"compile: {type(decoder).__name__} has no .layers to compile block by block")
    return list(layers)


def compile_blocks(decoder: nn.Module, dynamic: bool = True) -> int:
    """Compile each block in place (``nn.Module.compile``: the module keeps its name, its parameters and its
    state dict, so checkpoints, peft and DeepSpeed see the same model). Returns how many were compiled."""
    blocks = decoder_blocks(decoder)
    for block in blocks:
        block.compile(dynamic=dynamic)
    return len(blocks)


def compiled_blocks(decoder: nn.Module) -> int:
    """How many of the decoder's blocks run compiled: the read-back that the setting took effect."""
    return sum(getattr(b, "_compiled_call_impl", None) is not None for b in decoder_blocks(decoder))


def compile_stats() -> dict:
    """What dynamo compiled so far in this process: frames compiled (one per distinct call signature and
    recompilation) and graph breaks; a count that grows with each new length means shapes are not dynamic."""
    from torch._dynamo.utils import counters

    return {"frames_compiled": int(counters["stats"]["unique_graphs"]),
            "graph_breaks": int(sum(counters["graph_break"].values()))}
