"""Contrastive losses of stages 2 and 3 (DESIGN.md §1), on embeddings gathered from every rank."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def info_nce(queries: torch.Tensor, keys: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """Mean cross-entropy of each query's cosine similarities to all keys (/ temperature) vs its label."""
    logits = F.normalize(queries.float(), dim=-1) @ F.normalize(keys.float(), dim=-1).T / temperature
    return F.cross_entropy(logits, labels)


def unsupervised_loss(groups: dict, temperature: float) -> torch.Tensor:
    """SimCSE: view 1 of each sentence against view 2 of every sentence of the global batch."""
    z1, z2 = groups["view1"], groups["view2"]
    return info_nce(z1, z2, torch.arange(z1.shape[0], device=z1.device), temperature)


def supervised_loss(groups: dict, temperature: float) -> torch.Tensor:
    """Each query against every positive and every hard negative of the global batch."""
    q, pos, neg = groups["query"], groups["positive"], groups["negative"]
    keys = torch.cat([pos, neg]) if neg.shape[0] else pos
    return info_nce(q, keys, torch.arange(q.shape[0], device=q.device), temperature)


def gather_groups(local: torch.Tensor, sizes: dict[str, int]) -> dict[str, torch.Tensor]:
    """Each named group of rows (local rows are laid out group after group) from every rank, in rank order.

    The local rank's rows stay attached to ``local``'s graph; the others arrive as constants. Each rank
    computes the same global loss, and its gradient reaches this rank's rows only (other ranks handle
    theirs), so the sum over ranks of the local gradients is the full gradient.
    """
    import torch.distributed as dist

    names = list(sizes)
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return dict(zip(names, torch.split(local, [sizes[n] for n in names])))
    world, rank = dist.get_world_size(), dist.get_rank()
    counts = torch.tensor([sizes[n] for n in names], device=local.device, dtype=torch.long)
    all_counts = [torch.zeros_like(counts) for _ in range(world)]
    dist.all_gather(all_counts, counts)
    longest = max(int(c.sum()) for c in all_counts)
    padded = torch.zeros(longest, local.shape[1], device=local.device, dtype=local.dtype)
    padded[: local.shape[0]] = local.detach()
    everyone = [torch.zeros_like(padded) for _ in range(world)]
    dist.all_gather(everyone, padded)
    out = {n: [] for n in names}
    for r in range(world):
        rows = local if r == rank else everyone[r]
        start = 0
        for n, c in zip(names, all_counts[r].tolist()):
            out[n].append(rows[start : start + c])
            start += c
    return {n: torch.cat(parts) for n, parts in out.items()}
