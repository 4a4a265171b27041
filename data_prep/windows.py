"""Cutting a document's tokens into windows and drawing each window's context/continuation split."""
from __future__ import annotations

import hashlib


def window_bounds(n_tokens: int, max_tokens: int) -> list[tuple[int, int]]:
    """Consecutive windows covering all tokens, each at most ``max_tokens``, sizes within one of each other.

    Balanced sizes (not max-size windows plus a short tail) keep every window of a long document
    above half of ``max_tokens``, so no tail is ever too short to split.
    """
    if n_tokens <= 0:
        return []
    count = -(-n_tokens // max_tokens)
    base, extra = divmod(n_tokens, count)
    bounds, start = [], 0
    for i in range(count):
        end = start + base + (1 if i < extra else 0)
        bounds.append((start, end))
        start = end
    return bounds


def draw_split(seed: int, doc_id: str, window: int, length: int, min_context: int, min_continuation: int) -> int:
    """Context length for one window: uniform on [min_context, length - min_continuation].

    Deterministic in (seed, doc_id, window) alone, so the draw is the same whatever the worker
    count, the slicing or a resume.
    """
    lo, hi = min_context, length - min_continuation
    if hi < lo:
        raise ValueError(f"window of {length} tokens cannot hold {min_context}+{min_continuation}")
    digest = hashlib.blake2b(f"{seed}\x1f{doc_id}\x1f{window}".encode(), digest_size=8).digest()
    return lo + int.from_bytes(digest, "big") % (hi - lo + 1)
