"""Right-padding of token-id rows (torch only: the encoder and the benchmarks need no data libraries)."""
from __future__ import annotations

import torch


def pad_right(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, longest] ids padded with ``pad_id`` on the right, and the lengths [B]."""
    lengths = torch.tensor([len(r) for r in rows], dtype=torch.long)
    out = torch.full((len(rows), max(1, int(lengths.max()))), pad_id, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.tensor(r, dtype=torch.long)
    return out, lengths
