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
import os
import threading
from dataclasses import dataclass

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


def keep_from(seed: torch.Tensor, coords: list[torch.Tensor], salt: int, p: float) -> torch.Tensor:
    """Keep mask (True with probability 1 - p) from a seed and one coordinate tensor per dimension, all
    int64 and broadcastable to the mask's shape: mix(seed, salt), then mix in each coordinate in order.

    The leading coordinates are hashed on small tensors; the last one, which makes the tensor full-size,
    gets one multiply-xorshift round whose top bits decide, so the full-size work is a few integer passes
    (dropout on every LoRA input is most of a contrastive step's elementwise work)."""
    x = _mix((seed & _M32) ^ (salt * 0x61C88647 & _M32))
    for d, c in enumerate(coords[:-1]):
        x = _mix((x + c * _COORD[d % len(_COORD)]) & _M32)
    v = x ^ ((coords[-1] * _COORD[(len(coords) - 1) % len(_COORD)]) & _M32)
    v = ((v ^ (v >> 15)) * 0x45D9F3B) & _M32
    return v >= int(p * 4294967296.0)


_compiled = {}


def keep_mask(seed: torch.Tensor, coords: list[torch.Tensor], salt: int, p: float) -> torch.Tensor:
    """``keep_from``, compiled into one fused kernel on a GPU (eager, it is ~35 small kernels and five
    full-size int64 temporaries per mask: thousands of launches per forward). Bit-identical either way
    (tested on CPU; checked on GPU by bench/gpu_session.sh). ``LLM2COMP_COMPILE_DROPOUT=0`` turns it off."""
    if seed.device.type != "cuda" or os.environ.get("LLM2COMP_COMPILE_DROPOUT", "1") == "0":
        return keep_from(seed, coords, salt, p)
    fn = _compiled.get("cuda")
    if fn is None:
        fn = _compiled["cuda"] = torch.compile(keep_from, dynamic=True)
    return fn(seed, coords, salt, p)


def _arange(n: int, dim: int, ndim: int, device) -> torch.Tensor:
    return torch.arange(n, device=device, dtype=torch.int64).view(*([1] * dim), n, *([1] * (ndim - dim - 1)))


def row_keep(seeds: torch.Tensor, salt: int, shape: tuple[int, ...], p: float, device) -> torch.Tensor:
    """Keep mask of shape [B, *shape] from per-row seeds [B] and each element's coordinates."""
    nd = len(shape) + 1
    seed = seeds.to(device=device, dtype=torch.int64).view(-1, *([1] * len(shape)))
    return keep_mask(seed, [_arange(n, d + 1, nd, device) for d, n in enumerate(shape)], salt, p)


@dataclass
class PackedSeeds:
    """Inside a packed decoder call (``trainer/modeling/packing.py``): each packed token's sequence seed and
    its position in the sequence, [R, W], so that a mask element is the one the padded layout draws."""

    seed: torch.Tensor
    position: torch.Tensor

    def keep_tokens(self, salt: int, features: int, p: float) -> torch.Tensor:
        """For a [R, W, F] input: the padded [B, T, F] mask, element for element."""
        f = torch.arange(features, device=self.seed.device, dtype=torch.int64)[None, None, :]
        return keep_mask(self.seed[:, :, None], [self.position[:, :, None], f], salt, p)

    def keep_attention(self, salt: int, heads: int, p: float) -> torch.Tensor:
        """For [R, H, W, W] attention probabilities: the padded [B, H, T, T] mask within each sequence."""
        h = torch.arange(heads, device=self.seed.device, dtype=torch.int64)[None, :, None, None]
        q, k = self.position[:, None, :, None], self.position[:, None, None, :]
        return keep_mask(self.seed[:, None, :, None], [h, q, k], salt, p)


@contextlib.contextmanager
def packed_row_seeds(sequence: torch.Tensor, position: torch.Tensor):
    """Within a packed call: turn the batch's per-row seeds into per-token ones (no-op without seeds)."""
    seeds = current_seeds()
    if seeds is None or isinstance(seeds, PackedSeeds):
        yield
        return
    tokens = seeds.to(device=sequence.device, dtype=torch.int64)[sequence.clamp_min(0)]
    with row_seeds(PackedSeeds(tokens, position)):
        yield


def sample_seeds(run_seed: int, step: int, micro: int, sample: torch.Tensor, role: torch.Tensor) -> torch.Tensor:
    """One seed per (step, batch in the step, global sample index, role): the same row gets the same
    masks whichever rank, chunk or padding it is encoded in."""
    base = ((run_seed * 1_000_003 + step) * 1009 + micro) % (1 << 40)
    return (base * 1_000_033 + sample) * 67 + role


def current_seeds():
    """The active seeds: a [B] tensor (one per batch row), PackedSeeds, or None (torch's dropout)."""
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


def row_dropout(x: torch.Tensor, p: float, salt: int, seeds) -> torch.Tensor:
    if isinstance(seeds, PackedSeeds):
        if x.ndim == 3:
            keep = seeds.keep_tokens(salt, x.shape[-1], p)
        else:  # attention probabilities [R, H, W, W]
            keep = seeds.keep_attention(salt, x.shape[1], p)
    else:
        keep = row_keep(seeds, salt, tuple(x.shape[1:]), p, x.device)
    return torch.where(keep, x * (1.0 / (1.0 - p)), 0.0)


def salt_of(module: nn.Module):
    """A RowDropout's or an attention module's salt: the int in eager code; inside a compiled block the same
    value as a 0-d tensor (``salt_tensor``), an input of the graph, with the int not even read. An int
    attribute of a module is a constant that dynamo guards on, so one graph per layer: 30 layers passed its
    recompile limit (8) and the rest of the blocks silently ran eager."""
    if torch.compiler.is_compiling() and hasattr(module, "salt_tensor"):
        return module.salt_tensor
    return module.salt if isinstance(module, RowDropout) else attention_salt(module)


def add_salt_tensor(module: nn.Module, salt: int, device=None) -> None:
    module.register_buffer("salt_tensor", torch.tensor(salt, dtype=torch.int64, device=device), persistent=False)


class RowDropout(nn.Module):
    """nn.Dropout, but row-seeded inside ``row_seeds``."""

    def __init__(self, p: float, salt: int, device=None):
        super().__init__()
        self.p, self.salt = p, salt
        add_salt_tensor(self, salt, device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        seeds = current_seeds()
        if seeds is None:
            return nn.functional.dropout(x, self.p, True)
        return row_dropout(x, self.p, salt_of(self), seeds)


# Attention kwargs that change what attention computes and that the explicit path does not implement
# (soft-capping it does; sliding windows arrive in the mask): refused rather than silently dropped.
_REFUSED = ("s_aux", "sinks", "position_bias")
STATS = {"dropout_calls": 0}  # explicit row-seeded calls (tests assert the path ran)


def _original_attention(module, original: str):
    """The model's own implementation: ``eager`` is each modeling file's own function (Gemma 2's soft-caps)."""
    if original == "eager":
        import sys

        return sys.modules[type(module).__module__].eager_attention_forward
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    return ALL_ATTENTION_FUNCTIONS[original]


def explicit_attention(module, query, key, value, attention_mask, dropout: float, scaling=None, is_causal=None,
                       softcap=None, seeds=None):
    """softmax(QK^T·scaling [soft-capped] + mask) V with row-seeded dropout on the probabilities, as the
    modeling files' eager attention computes it. Sliding windows arrive inside the mask."""
    from transformers.integrations.sdpa_attention import repeat_kv

    groups = query.shape[1] // key.shape[1]
    k, v = repeat_kv(key, groups), repeat_kv(value, groups)
    scaling = scaling if scaling is not None else query.shape[-1] ** -0.5
    w = torch.matmul(query, k.transpose(2, 3)) * scaling
    if softcap is not None:
        w = torch.tanh(w / softcap) * softcap
    tq, tk = w.shape[-2:]
    # The dtype's minimum rather than -inf, as eager attention masks: a row with no key left (a padding
    # position outside every window) stays finite instead of turning into NaN that spreads to real rows.
    low = torch.finfo(w.dtype).min
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:
            w = w.masked_fill(~attention_mask, low)
        else:
            w = w + attention_mask[..., :tk]
    elif (is_causal if is_causal is not None else getattr(module, "is_causal", True)) and tq > 1:
        w = w.masked_fill(torch.ones(tq, tk, dtype=torch.bool, device=w.device).triu(1), low)
    w = torch.softmax(w, dim=-1, dtype=torch.float32).to(query.dtype)
    if seeds is not None and dropout > 0:
        if not torch.compiler.is_compiling():  # a Python counter in a compiled block: a recompile per call
            STATS["dropout_calls"] += 1
        w = row_dropout(w, dropout, salt_of(module), seeds)
    return torch.matmul(w, v).transpose(1, 2).contiguous(), None


def attention_salt(module) -> int:
    return 1_000_003 + int(getattr(module, "layer_idx", 0))


def _row_dropout_attention(original: str, fallback_explicit: bool):
    def attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, is_causal=None,
                  **kwargs):
        """Row-seeded dropout on the attention probabilities; the model's own attention when there is none."""
        seeds = current_seeds()
        refused = [k for k in _REFUSED if kwargs.get(k) is not None]
        if refused:
            from data_prep.errors import UserError

            raise UserError(f"{type(module).__name__} passes {', '.join(refused)} to attention, which row-seeded "
                            "attention dropout does not implement; set contrast.attention_dropout=0")
        if seeds is None or dropout == 0 or not module.training:
            if not fallback_explicit:
                return _original_attention(module, original)(module, query, key, value, attention_mask, dropout=dropout,
                                                             scaling=scaling, is_causal=is_causal, **kwargs)
            seeds = None
        return explicit_attention(module, query, key, value, attention_mask, dropout, scaling, is_causal,
                                  kwargs.get("softcap"), seeds)

    return attention


def register_attention(original: str, supported: list[str]) -> str:
    """Register a transformers attention implementation that wraps ``original`` with row-seeded dropout,
    with ``original``'s mask format (so it can hand over to it); returns its name.

    flash-attn takes no 4D mask, so a flash model gets SDPA's masks and, without dropout, SDPA (or the
    explicit path where the model has no SDPA support)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

    if original.startswith(ATTENTION_NAME):
        return original
    mask_format = original if original in ("sdpa", "eager") else "sdpa"
    fallback = original if original in ("sdpa", "eager") else "sdpa"
    name = f"{ATTENTION_NAME}_{original}"
    AttentionInterface.register(name, _row_dropout_attention(fallback, fallback not in supported))
    AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS[mask_format])
    return name


def install(peft_model: nn.Module) -> int:
    """Replace every LoRA dropout with a RowDropout of the same rate; returns how many. Every attention module
    gets its salt as a tensor too (``salt_of``)."""
    n = 0
    for module in peft_model.modules():
        device = next(module.parameters(), torch.empty(0)).device  # where the model is (built on the GPU, or moved later)
        if hasattr(module, "layer_idx") and hasattr(module, "is_causal") and not hasattr(module, "salt_tensor"):
            add_salt_tensor(module, attention_salt(module), device)
        drops = getattr(module, "lora_dropout", None)
        if isinstance(drops, nn.ModuleDict):
            for name, d in list(drops.items()):
                p = d.p if isinstance(d, nn.Dropout) else 0.0
                drops[name] = RowDropout(p, salt=n, device=device)
                n += 1
    return n
