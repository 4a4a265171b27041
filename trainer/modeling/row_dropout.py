"""Dropout whose masks depend on each row's seed and each element's coordinates, not on the batch.

Gradient caching (DESIGN.md §4) encodes a batch twice, chunk by chunk, and must give the gradients of one
full-batch pass with dropout on. With torch's generator, a row's mask depends on what else was drawn
before it (its chunk, its rank, the batch's padding), so the two cannot agree. Here every mask element is
a hash of (row seed, module salt, coordinates): the same row gets the same masks in any chunk, on any
rank, at any padding, in the first pass, the replay and a gradient-checkpoint recomputation, with no RNG
state to save. Active only inside ``row_seeds(...)``; elsewhere dropout is torch's.
"""
from __future__ import annotations

import contextlib
import threading
from typing import Optional

import torch
from torch import nn

_M32 = 0xFFFFFFFF
_COORD = (0x9E3779B1, 0x85EBCA77, 0xC2B2AE3D, 0x27D4EB2F)  # one odd multiplier per coordinate
_state = threading.local()
ATTENTION_NAME = "llm2comp_row_dropout"


def _mix(x: torch.Tensor) -> torch.Tensor:
    # A 32-bit integer hash kept in int64 (products stay below 2**63, so no overflow anywhere).
    x = (((x >> 16) ^ x) * 0x45D9F3B) & _M32
    x = (((x >> 16) ^ x) * 0x45D9F3B) & _M32
    return (x >> 16) ^ x


def row_keep(seeds: torch.Tensor, salt: int, shape: tuple[int, ...], p: float, device) -> torch.Tensor:
    """Keep mask (True with probability 1 - p) of shape [B, *shape] from per-row seeds and coordinates.

    The leading coordinates are hashed on small tensors; the last one, which makes the tensor full-size,
    gets one multiply-xorshift round whose top bits decide, so the full-size work is a few integer passes
    (dropout on every LoRA input is most of a contrastive step's elementwise work)."""
    x = _mix((seeds.to(device=device, dtype=torch.int64) & _M32) ^ (salt * 0x61C88647 & _M32))
    x = x.view(-1, *([1] * len(shape)))
    for d, n in enumerate(shape[:-1]):
        coord = torch.arange(n, device=device, dtype=torch.int64) * _COORD[d % len(_COORD)]
        x = _mix((x + coord.view(*([1] * d), n, *([1] * (len(shape) - d - 1)))) & _M32)
    last = (torch.arange(shape[-1], device=device, dtype=torch.int64) * _COORD[(len(shape) - 1) % len(_COORD)]) & _M32
    v = x ^ last
    v = ((v ^ (v >> 15)) * 0x45D9F3B) & _M32
    return v >= int(p * 4294967296.0)


def current_seeds() -> Optional[torch.Tensor]:
    return getattr(_state, "seeds", None)


@contextlib.contextmanager
def row_seeds(seeds: torch.Tensor):
    """Dropout inside this context uses one seed per batch row (``seeds``: int64 [B])."""
    before = current_seeds()
    _state.seeds = seeds
    try:
        yield
    finally:
        _state.seeds = before


def row_seeds_checkpoint_context():
    """``context_fn`` pair for torch.utils.checkpoint: recompute under the row seeds of the forward."""
    return contextlib.nullcontext(), row_seeds(current_seeds())


def row_dropout(x: torch.Tensor, p: float, salt: int, seeds: torch.Tensor) -> torch.Tensor:
    keep = row_keep(seeds, salt, tuple(x.shape[1:]), p, x.device)
    return torch.where(keep, x * (1.0 / (1.0 - p)), 0.0)


class RowDropout(nn.Module):
    """nn.Dropout, but row-seeded inside ``row_seeds``."""

    def __init__(self, p: float, salt: int):
        super().__init__()
        self.p, self.salt = p, salt

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        seeds = current_seeds()
        if seeds is None:
            return nn.functional.dropout(x, self.p, True)
        return row_dropout(x, self.p, self.salt, seeds)


def attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, is_causal=None, **kwargs):
    """Attention with row-seeded dropout on the probabilities; plain SDPA when there is no dropout."""
    from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward

    seeds = current_seeds()
    if seeds is None or dropout == 0 or not module.training:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    groups = query.shape[1] // key.shape[1]
    k, v = repeat_kv(key, groups), repeat_kv(value, groups)
    scaling = scaling if scaling is not None else query.shape[-1] ** -0.5
    w = torch.matmul(query, k.transpose(2, 3)) * scaling
    tq, tk = w.shape[-2:]
    if attention_mask is not None:
        w = w.masked_fill(~attention_mask, float("-inf")) if attention_mask.dtype == torch.bool else w + attention_mask
    elif (is_causal if is_causal is not None else getattr(module, "is_causal", True)) and tq > 1:
        w = w.masked_fill(torch.ones(tq, tk, dtype=torch.bool, device=w.device).triu(1), float("-inf"))
    w = torch.softmax(w, dim=-1, dtype=torch.float32).to(query.dtype)
    w = row_dropout(w, dropout, 1_000_003 + int(getattr(module, "layer_idx", 0)), seeds)
    return torch.matmul(w, v).transpose(1, 2).contiguous(), None


def register_attention() -> str:
    """Make ``ATTENTION_NAME`` a transformers attention implementation (with SDPA's mask format)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(ATTENTION_NAME, attention)
    AttentionMaskInterface.register(ATTENTION_NAME, sdpa_mask)
    return ATTENTION_NAME


def install(peft_model: nn.Module) -> int:
    """Replace every LoRA dropout with a RowDropout of the same rate; returns how many."""
    n = 0
    for module in peft_model.modules():
        drops = getattr(module, "lora_dropout", None)
        if isinstance(drops, nn.ModuleDict):
            for name, d in list(drops.items()):
                p = d.p if isinstance(d, nn.Dropout) else 0.0
                drops[name] = RowDropout(p, salt=n)
                n += 1
    return n
