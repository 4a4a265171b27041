"""Model FLOPs: the useful matmul work of a batch's real tokens (padding, recomputation and the first
no-grad pass of gradient caching are not counted)."""
from __future__ import annotations

from .archs import MEMORY_TOKENS, Dims


def linear_params_per_layer(d: Dims) -> int:
    """P = q + k + v + o + gate + up + down weights of one layer:
    H*(n_h*d_h) + 2*H*(n_kv*d_h) + (n_h*d_h)*H + 3*H*I."""
    a, kv = d.heads * d.head_dim, d.kv_heads * d.head_dim
    return d.hidden * a + 2 * d.hidden * kv + a * d.hidden + 3 * d.hidden * d.intermediate


def attention_pairs(s: int, causal: bool) -> int:
    """(query, key) pairs of one head on s tokens: s^2 bidirectional, s(s+1)/2 causal."""
    return s * (s + 1) // 2 if causal else s * s


def stack_flops(d: Dims, s: int, causal: bool, backward: bool) -> int:
    """Matmul FLOPs of the decoder stack (no LM head) on one sequence of s real tokens.

    Forward, per layer: 2*P*s for the linear layers (P = ``linear_params_per_layer``) plus
    4*(n_h*d_h)*pairs(s) for attention scores (Q K^T) and values (A V).
    Backward (``backward=True`` adds it): the base weights are frozen (only LoRA trains), so the linear
    layers compute input gradients only, 1x their forward (no weight gradients; LoRA's own weight
    gradients are negligible and not counted); the attention core has two activation operands and
    computes both gradients, 2x its forward. Forward+backward = 2 * linear + 3 * attention.
    Recomputation by gradient checkpointing is not counted.
    """
    linear = 2 * linear_params_per_layer(d) * s
    attention = 4 * d.heads * d.head_dim * attention_pairs(s, causal)
    per_layer = 2 * linear + 3 * attention if backward else linear + attention
    return d.layers * per_layer


def head_flops(d: Dims, positions: int, backward: bool) -> int:
    """LM head (frozen): 2*H*V per position forward; x2 with the gradient to its input."""
    return 2 * d.hidden * d.vocab * positions * (2 if backward else 1)


def compression_flops(d: Dims, context: list[int], continuation: list[int], k: int, prefix: int,
                      objective: str = "kl") -> int:
    """Useful model FLOPs of one stage-1 step, summed over samples (c = context, L = continuation,
    p = prefix tokens, K = memory tokens; t = targets: L, or c for ``rc``):

      E  forward+backward, bidirectional, on p + c + K tokens          stack_flops(p+c+K, bi, bwd)
      D  forward+backward to its inputs, causal, on p + K + t tokens    stack_flops(p+K+t, causal, bwd)
         + LM head forward+backward on the t target positions           head_flops(t, bwd)
      kl only: teacher D forward, causal, on p + c + L tokens           stack_flops(p+c+L, causal)
         + LM head forward on the L target positions                    head_flops(L)
    """
    total = 0
    for c, cont in zip(context, continuation):
        t = c if objective == "rc" else cont
        total += stack_flops(d, prefix + c + k, causal=False, backward=True)
        total += stack_flops(d, prefix + k + t, causal=True, backward=True) + head_flops(d, t, backward=True)
        if objective == "kl":
            total += stack_flops(d, prefix + c + cont, causal=True, backward=False) + head_flops(d, cont, backward=False)
    return total


def contrast_flops(d: Dims, lengths: list[int], k: int, prefix: int) -> int:
    """One stage-2/3 step: E forward+backward, bidirectional, on p + s + K tokens per encoded row. The
    first, no-grad pass of gradient caching is recomputation-like overhead and is not counted; nor is
    the InfoNCE loss (a [rows x rows x H] product, negligible)."""
    return sum(stack_flops(d, prefix + s + k, causal=False, backward=True) for s in lengths)


def encode_flops(d: Dims, lengths: list[int], k: int, prefix: int) -> int:
    """Encoding: E forward, bidirectional, on p + s + K tokens per text."""
    return sum(stack_flops(d, prefix + s + k, causal=False, backward=False) for s in lengths)


def batch_flops(stage: str, batch: dict, d: Dims, prefix: int, objective: str) -> int:
    if stage == "pretrain":
        return compression_flops(d, batch["context_len"].tolist(), batch["continuation_len"].tolist(),
                                 MEMORY_TOKENS, prefix, objective)
    if stage == "ucl":
        return contrast_flops(d, 2 * batch["lengths"].tolist(), MEMORY_TOKENS, prefix)
    rows = batch["query_len"].tolist() + batch["positive_len"].tolist() + batch["negative_len"].tolist()
    return contrast_flops(d, rows, MEMORY_TOKENS, prefix)
