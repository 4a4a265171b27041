"""Packing: a right-padded batch laid out as rows of concatenated sequences, with no padding between them.

Every decoder call of the pipeline (E, D, the teacher, the exported encoder) takes a right-padded batch.
With packing on (``data.packing``), ``run_decoder`` lays the batch's sequences end to end into rows of up
to ``max_tokens_per_row`` tokens, restarts the position ids at every sequence, isolates each sequence's
attention, runs the decoder on the rows, and puts the states back where the padded batch had them. The
batch holds the same samples; only the computation skips the padding.

Isolation is the trap: transformers keeps position-id-packed sequences apart only in causal calls; with
``is_causal=False``, sdpa and eager attend across the packed sequences. So the isolation is explicit:
flash-attn's variable-length kernels (``cu_seqlens``) where flash-attn runs, otherwise a block-diagonal 4D
mask (causal or bidirectional inside each block), which transformers hands to the kernels as it is.

Row-seeded dropout stays exact under packing: inside a packed call each token carries its sequence's seed
and its position in the sequence (``trainer/modeling/row_dropout.py``), so every mask element is the one
the padded layout draws.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from data_prep.errors import UserError


@dataclass
class Layout:
    """Where each real token of a padded [B, T] batch goes in packed [R, W] rows."""

    rows: int
    width: int
    src_b: torch.Tensor  # [N] batch row of each real token
    src_t: torch.Tensor  # [N] its position in the padded row (= in its sequence)
    dst_r: torch.Tensor  # [N] packed row
    dst_w: torch.Tensor  # [N] position in the packed row
    position_ids: torch.Tensor  # [R, W] position of each packed token in its sequence (0 for filler)
    sequence: torch.Tensor  # [R, W] batch row of each packed token, -1 for filler at a row's end
    lengths: torch.Tensor  # [B]


def assign_rows(lengths: list[int], max_tokens_per_row: int) -> list[list[int]]:
    """First-fit decreasing: sequence indices per row, each row's total ≤ max_tokens_per_row (a longer
    sequence gets a row of its own). Deterministic for given lengths."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    rows: list[list[int]] = []
    room: list[int] = []
    for i in order:
        n = lengths[i]
        for r, free in enumerate(room):
            if n <= free:
                rows[r].append(i)
                room[r] -= n
                break
        else:
            rows.append([i])
            room.append(max_tokens_per_row - n)
    return rows


def layout(lengths: torch.Tensor, max_tokens_per_row: int, one_row: bool = False) -> Layout:
    """``one_row``: every sequence in a single row (flash-attn's variable-length kernels take one flat row)."""
    device = lengths.device
    lens = [int(n) for n in lengths.tolist()]
    rows = [list(range(len(lens)))] if one_row else assign_rows(lens, max_tokens_per_row)
    width = max(1, max(sum(lens[i] for i in row) for row in rows))
    src_b, src_t, dst_r, dst_w = [], [], [], []
    for r, row in enumerate(rows):
        offset = 0
        for i in row:
            n = lens[i]
            src_b.append(torch.full((n,), i, dtype=torch.long))
            src_t.append(torch.arange(n))
            dst_r.append(torch.full((n,), r, dtype=torch.long))
            dst_w.append(torch.arange(offset, offset + n))
            offset += n
    cat = lambda parts: torch.cat(parts).to(device) if parts else torch.zeros(0, dtype=torch.long, device=device)
    src_b, src_t, dst_r, dst_w = cat(src_b), cat(src_t), cat(dst_r), cat(dst_w)
    position_ids = torch.zeros(len(rows), width, dtype=torch.long, device=device)
    sequence = torch.full((len(rows), width), -1, dtype=torch.long, device=device)
    position_ids[dst_r, dst_w] = src_t
    sequence[dst_r, dst_w] = src_b
    return Layout(len(rows), width, src_b, src_t, dst_r, dst_w, position_ids, sequence, lengths)


def pack(x: torch.Tensor, lay: Layout) -> torch.Tensor:
    """[B, T, ...] padded -> [R, W, ...] packed (zeros where a row ends early)."""
    out = x.new_zeros((lay.rows, lay.width, *x.shape[2:]))
    out[lay.dst_r, lay.dst_w] = x[lay.src_b, lay.src_t]
    return out


def unpack(y: torch.Tensor, lay: Layout, width: int) -> torch.Tensor:
    """[R, W, ...] packed -> [B, width, ...] padded (zeros at padding positions)."""
    out = y.new_zeros((lay.lengths.shape[0], width, *y.shape[2:]))
    out[lay.src_b, lay.src_t] = y[lay.dst_r, lay.dst_w]
    return out


def block_mask(lay: Layout, causal: bool, additive_dtype: torch.dtype | None = None) -> torch.Tensor:
    """[R, 1, W, W]: a token attends to the tokens of its own sequence (earlier ones only if ``causal``).
    A filler position attends to itself only, so no row is empty. Boolean (True = attend) for SDPA-style
    kernels; additive (0 / dtype minimum) for eager attention when ``additive_dtype`` is given."""
    seq, pos = lay.sequence, lay.position_ids
    same = (seq[:, :, None] == seq[:, None, :]) & (seq[:, :, None] >= 0)
    if causal:
        same &= pos[:, :, None] >= pos[:, None, :]
    eye = torch.eye(lay.width, dtype=torch.bool, device=seq.device)[None]
    allowed = same | (eye & (seq[:, :, None] < 0))
    allowed = allowed[:, None]
    if additive_dtype is None:
        return allowed
    return torch.zeros(allowed.shape, dtype=additive_dtype, device=seq.device).masked_fill(
        ~allowed, torch.finfo(additive_dtype).min)


def check_windows(config, lengths: torch.Tensor) -> None:
    """A block mask carries no sliding window: refuse packing where a sequence outgrows the model's window."""
    window = getattr(config, "sliding_window", None)
    if getattr(config, "use_sliding_window", True) is False:  # Qwen2: a window in the config, unused
        window = None
    if window and int(lengths.max()) > window:
        raise UserError(f"data.packing: a sequence of {int(lengths.max())} tokens exceeds the model's sliding "
                        f"window of {window}, which packed attention does not apply; use data.packing=false")
