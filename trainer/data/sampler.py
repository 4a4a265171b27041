"""Deterministic, resumable, distributed batch sampler that groups samples of similar length.

Every rank builds the same global batches from (lengths, micro_batch, world_size, seed, epoch) alone
and takes its own contiguous slice of each, so no communication is needed and all ranks run the
same number of steps (DeepSpeed hangs if one rank runs out of batches before the others). The only
mutable state is the position (epoch, batch_in_epoch), which is what a checkpoint stores.

drop_last: each epoch the incomplete last global batch is dropped, so at most
``micro_batch * world_size - 1`` samples per epoch are left out; which ones differs each epoch
because they are the tail of that epoch's shuffled permutation.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Iterator, Sequence

import numpy as np


@dataclass
class SamplerState:
    """What a checkpoint stores: the position of the NEXT global batch to yield."""

    epoch: int
    batch_in_epoch: int  # global batches already consumed in this epoch


class LengthGroupedBatchSampler:
    def __init__(self, lengths: Sequence[int] | np.ndarray, micro_batch: int, world_size: int, rank: int,
                 seed: int = 0, group_batches: int = 64, shuffle: bool = True, group_by_length: bool = True,
                 groups: Sequence[int] | np.ndarray | None = None):
        self.lengths = np.asarray(lengths, dtype=np.int64).reshape(-1)
        # groups: a group id per sample; global batches then never mix groups (e.g. one source per batch).
        self.groups = None if groups is None else np.asarray(groups, dtype=np.int64).reshape(-1)
        n = len(self.lengths)
        if n == 0:
            raise ValueError("dataset is empty")
        if micro_batch < 1:
            raise ValueError(f"micro_batch must be >= 1, got {micro_batch}")
        if world_size < 1:
            raise ValueError(f"world_size must be >= 1, got {world_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is out of range for world_size {world_size}")
        if group_batches < 1:
            raise ValueError(f"group_batches must be >= 1, got {group_batches}")
        self.micro_batch, self.world_size, self.rank = micro_batch, world_size, rank
        self.global_batch = micro_batch * world_size
        if n < self.global_batch:
            raise ValueError(f"dataset of {n} samples is smaller than one global batch of {self.global_batch} "
                             f"(micro_batch {micro_batch} × world {world_size})")
        self.seed, self.group_batches = seed, group_batches
        self.shuffle, self.group_by_length = shuffle, group_by_length
        self.state = SamplerState(epoch=0, batch_in_epoch=0)

    def batches_per_epoch(self) -> int:
        """Global batches per epoch, identical on every rank (drop_last, per group when grouped)."""
        if self.groups is not None:
            return int(sum(c // self.global_batch for c in np.unique(self.groups, return_counts=True)[1]))
        return len(self.lengths) // self.global_batch

    def epoch_batches(self, epoch: int) -> np.ndarray:
        """All global batches of `epoch` as an array (batches_per_epoch, global_batch) of indices."""
        rng = np.random.default_rng([self.seed, epoch])  # seeded per epoch: any epoch is reproducible alone
        if self.groups is not None:
            parts = []
            for g in np.unique(self.groups):
                members = np.flatnonzero(self.groups == g)
                members = rng.permutation(members) if self.shuffle else members
                whole = len(members) // self.global_batch * self.global_batch
                parts.append(members[:whole].reshape(-1, self.global_batch))
            batches = np.concatenate(parts)
            return batches[rng.permutation(len(batches))] if self.shuffle else batches
        n = len(self.lengths)
        perm = rng.permutation(n) if self.shuffle else np.arange(n)
        nb = self.batches_per_epoch()
        perm = perm[: nb * self.global_batch]  # drop_last: the shuffled tail, so a different one each epoch
        if not self.group_by_length:
            return perm.reshape(nb, self.global_batch)
        # Sort within mega-groups only: batches hold similar lengths, yet the randomness of the
        # permutation survives at the scale of the group (a global sort would fix batch contents forever).
        # Sorted descending, each global batch and each consecutive micro_batch slice of it (one rank's
        # micro-batch) is length-homogeneous, so padding is small on every rank.
        group = self.group_batches * self.global_batch
        for start in range(0, len(perm), group):
            chunk = perm[start:start + group]
            perm[start:start + group] = chunk[np.argsort(-self.lengths[chunk], kind="stable")]
        batches = perm.reshape(nb, self.global_batch)
        if self.shuffle:  # else mega-group order would go from long to short batches, group after group
            batches = batches[rng.permutation(nb)]
        # The longest batch first, as HF's LengthGroupedSampler does: an out-of-memory shows on step 1,
        # not hours into the epoch.
        longest = int(np.argmax(self.lengths[batches].max(axis=1)))
        batches[[0, longest]] = batches[[longest, 0]]
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        """This rank's micro-batches, forever, from the current state. After load_state_dict(), start a
        new iterator: a running one keeps its own position."""
        lo, hi = self.rank * self.micro_batch, (self.rank + 1) * self.micro_batch
        nb = self.batches_per_epoch()
        while True:
            epoch, start = self.state.epoch, self.state.batch_in_epoch
            batches = self.epoch_batches(epoch)
            for i in range(start, nb):
                # Advance before yielding: a checkpoint taken after this step must resume at the next one.
                self.state = SamplerState(epoch, i + 1) if i + 1 < nb else SamplerState(epoch + 1, 0)
                yield batches[i, lo:hi].tolist()

    def state_dict(self) -> dict:
        return asdict(self.state)

    def load_state_dict(self, d: dict) -> None:
        epoch, batch = int(d["epoch"]), int(d["batch_in_epoch"])
        if epoch < 0 or not 0 <= batch < self.batches_per_epoch():
            raise ValueError(f"invalid sampler state epoch={epoch} batch_in_epoch={batch} "
                             f"for {self.batches_per_epoch()} batches per epoch")
        self.state = SamplerState(epoch, batch)

    @staticmethod
    def padding_efficiency(lengths, batches) -> float:
        """sum(real tokens) / sum(len(batch) * longest in batch): 1.0 means no padding."""
        lengths = np.asarray(lengths)
        real = padded = 0
        for b in batches:
            if len(b):
                lb = lengths[np.asarray(b)]
                real += int(lb.sum())
                padded += len(b) * int(lb.max())
        return real / padded if padded else 1.0
