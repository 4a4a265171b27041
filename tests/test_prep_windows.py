"""Windowing and split draws: coverage, bounds, balance, determinism, uniformity."""
import random
from collections import Counter

import pytest

from data_prep.windows import draw_split, window_bounds


@pytest.mark.parametrize("max_tokens", [40, 64, 512])
def test_windows_cover_all_tokens_in_order_within_bounds(max_tokens):
    for n in list(range(0, 3 * max_tokens + 3)) + [10_000, 10_001]:
        bounds = window_bounds(n, max_tokens)
        if n == 0:
            assert bounds == []
            continue
        assert bounds[0][0] == 0 and bounds[-1][1] == n
        assert all(b[1] == c[0] for b, c in zip(bounds, bounds[1:])), "windows must be consecutive"
        sizes = [b - a for a, b in bounds]
        assert max(sizes) <= max_tokens
        assert max(sizes) - min(sizes) <= 1, "balanced sizes"
        assert len(bounds) == -(-n // max_tokens), "fewest windows possible"
        if len(bounds) > 1:
            assert min(sizes) > max_tokens // 2 - 1


def test_split_respects_minima_and_is_deterministic():
    rng = random.Random(1)
    for _ in range(2000):
        length = rng.randint(20, 512)
        doc, window, seed = f"d{rng.randint(0, 10**6)}", rng.randint(0, 5), rng.randint(0, 3)
        s = draw_split(seed, doc, window, length, 10, 10)
        assert 10 <= s <= length - 10
        assert s == draw_split(seed, doc, window, length, 10, 10)


def test_split_depends_on_seed_doc_and_window():
    base = draw_split(0, "doc", 0, 500, 10, 10)
    others = {draw_split(1, "doc", 0, 500, 10, 10), draw_split(0, "doc2", 0, 500, 10, 10), draw_split(0, "doc", 1, 500, 10, 10)}
    assert others != {base}


def test_split_is_uniform_over_the_allowed_range():
    # length 30 with minima 10/10 leaves 11 cut points; 22,000 draws -> ~2,000 each.
    counts = Counter(draw_split(7, f"doc{i}", 0, 30, 10, 10) for i in range(22_000))
    assert sorted(counts) == list(range(10, 21))
    expected = 22_000 / 11
    chi2 = sum((c - expected) ** 2 / expected for c in counts.values())
    assert chi2 < 30, f"chi-square {chi2:.1f} with 10 degrees of freedom: not uniform"


def test_impossible_split_raises():
    with pytest.raises(ValueError):
        draw_split(0, "d", 0, 15, 10, 10)
