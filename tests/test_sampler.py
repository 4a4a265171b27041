"""LengthGroupedBatchSampler: rank consistency, coverage, resume, padding, longest-first, validation."""
import json
from itertools import islice

import numpy as np
import pytest

from trainer.data.sampler import LengthGroupedBatchSampler as Sampler

N, MB, WORLD = 1003, 4, 3  # 1003 % 12 = 7: the drop_last path is exercised
LENGTHS = np.clip(np.random.default_rng(0).lognormal(5.0, 1.0, N).astype(int), 1, None)


def take(sampler, k):
    return list(islice(iter(sampler), k))


def rank_batches(k, **kw):
    return [take(Sampler(LENGTHS, MB, WORLD, r, **kw), k) for r in range(WORLD)]


@pytest.mark.parametrize("group_by_length", [True, False])
@pytest.mark.parametrize("shuffle", [True, False])
def test_ranks_partition_each_epoch(group_by_length, shuffle):
    s = Sampler(LENGTHS, MB, WORLD, 0, group_by_length=group_by_length, shuffle=shuffle)
    nb = s.batches_per_epoch()
    assert nb == N // (MB * WORLD)
    per_rank = rank_batches(2 * nb, group_by_length=group_by_length, shuffle=shuffle)
    assert all(len(b) == 2 * nb for b in per_rank) and all(len(mb) == MB for b in per_rank for mb in b)
    epochs = []
    for e in range(2):
        steps = range(e * nb, (e + 1) * nb)
        for i in steps:  # micro-batches of one step are disjoint and concatenate to the global batch
            glob = sum((per_rank[r][i] for r in range(WORLD)), [])
            assert len(set(glob)) == MB * WORLD
            assert glob == s.epoch_batches(e)[i - e * nb].tolist()
        seen = [x for i in steps for r in range(WORLD) for x in per_rank[r][i]]
        assert len(seen) == len(set(seen)), "an index repeated within an epoch"
        assert N - len(seen) < MB * WORLD and set(seen) <= set(range(N))
        epochs.append(seen)
    assert (epochs[0] != epochs[1]) == shuffle


def test_resume_equals_uninterrupted_run_across_epoch_boundary():
    nb = Sampler(LENGTHS, MB, WORLD, 0).batches_per_epoch()
    for rank in range(WORLD):
        full = take(Sampler(LENGTHS, MB, WORLD, rank, seed=7), 3 * nb)
        for k in (0, 1, nb - 1, nb, nb + 5):
            s = Sampler(LENGTHS, MB, WORLD, rank, seed=7)
            it = iter(s)
            head = [next(it) for _ in range(k)]
            state = json.loads(json.dumps(s.state_dict()))  # as a checkpoint would store it
            assert state == {"epoch": k // nb, "batch_in_epoch": k % nb}
            resumed = Sampler(LENGTHS, MB, WORLD, rank, seed=7)
            resumed.load_state_dict(state)
            assert head + take(resumed, 3 * nb - k) == full


def test_grouping_keeps_padding_small():
    eff = {}
    for group in (True, False):
        batches = [b for r in rank_batches(2 * (N // (MB * WORLD)), group_by_length=group) for b in r]
        eff[group] = Sampler.padding_efficiency(LENGTHS, batches)
    # Measured 0.96 grouped vs 0.46 ungrouped on these lognormal lengths.
    assert eff[True] >= 0.9 and eff[False] <= 0.6, eff
    assert Sampler.padding_efficiency([3, 1, 2, 2], [[0, 1], [2, 3]]) == pytest.approx(8 / 10)


def test_longest_sample_of_each_epoch_is_in_first_batch():
    for seed in range(5):
        s = Sampler(LENGTHS, MB, WORLD, 0, seed=seed)
        for e in range(3):
            batches = s.epoch_batches(e)
            assert LENGTHS[batches[0]].max() == LENGTHS[batches].max()
            # and each rank's micro-batch is length-homogeneous: sorted descending within the global batch
            assert all(np.all(np.diff(LENGTHS[b]) <= 0) for b in batches)


def test_deterministic_across_instances_and_seed_dependent():
    assert rank_batches(200, seed=3) == rank_batches(200, seed=3)
    assert rank_batches(50, seed=3) != rank_batches(50, seed=4)


@pytest.mark.parametrize("args, message", [
    (([], 4, 2, 0), "empty"),
    ((LENGTHS, 0, 2, 0), "micro_batch"),
    ((LENGTHS, 4, 0, 0), "world_size"),
    ((LENGTHS, 4, 2, 2), "rank 2"),
    ((LENGTHS, 4, 2, -1), "rank -1"),
    (([1] * 5, 4, 2, 0), "dataset of 5 samples is smaller than one global batch of 8 (micro_batch 4 × world 2)"),
])
def test_validation(args, message):
    with pytest.raises(ValueError) as err:
        Sampler(*args)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_bad_state_rejected():
    s = Sampler(LENGTHS, MB, WORLD, 0)
    with pytest.raises(ValueError, match="invalid sampler state"):
        s.load_state_dict({"epoch": 0, "batch_in_epoch": s.batches_per_epoch()})


def test_groups_never_mix_within_a_global_batch():
    groups = np.array([0] * 37 + [1] * 50 + [2] * 13)
    lengths = np.arange(100) % 17 + 1
    samplers = [Sampler(lengths, 3, 2, r, seed=4, groups=groups) for r in range(2)]
    per_epoch = samplers[0].batches_per_epoch()
    assert per_epoch == 37 // 6 + 50 // 6 + 13 // 6
    its = [iter(s) for s in samplers]
    seen_groups = set()
    for _ in range(per_epoch):
        batch = [i for it in its for i in next(it)]
        assert len({int(groups[i]) for i in batch}) == 1
        seen_groups.add(int(groups[batch[0]]))
    assert seen_groups == {0, 1, 2}
