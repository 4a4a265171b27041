"""Synthetic batches (fixed seed; the same batches for every mode), shaped as the trainer's data yields them."""
from __future__ import annotations

import math

from .archs import SEED


def _token_rows(rng, lengths, vocab: int) -> list[list[int]]:
    return [rng.integers(3, vocab, int(n)).tolist() for n in lengths]  # ids 0..2: specials


def _lognormal_lengths(rng, n: int, median: float, sigma: float, lo: int, hi: int):
    import numpy as np

    return np.clip(np.round(rng.lognormal(math.log(median), sigma, n)), lo, max(lo, hi)).astype(int)


def compression_batches(n_batches: int, micro_batch: int, seq: int, vocab: int, seed: int = SEED) -> list[dict]:
    """Wikipedia-like windows: document lengths lognormal (median 400 tokens), cut into balanced windows of
    at most ``seq`` tokens (``data_prep.windows.window_bounds``), split uniformly with >= 10 tokens each
    side (DESIGN.md §3); batched by the trainer's length-grouped sampler, as ``CompressionBatches`` does."""
    import numpy as np

    from data_prep.windows import window_bounds
    from trainer.data.padding import pad_right
    from trainer.data.sampler import LengthGroupedBatchSampler

    rng = np.random.default_rng(seed)
    n, windows = n_batches * micro_batch, []
    while len(windows) < n:
        doc = int(_lognormal_lengths(rng, 1, 400, 1.0, 20, 20000)[0])
        windows += [e - s for s, e in window_bounds(doc, seq) if e - s >= 20]
    windows = rng.permutation(windows)[:n]
    split = [int(rng.integers(10, w - 10 + 1)) for w in windows]
    ctx = _token_rows(rng, split, vocab)
    cont = _token_rows(rng, [w - c for w, c in zip(windows, split)], vocab)
    sampler = LengthGroupedBatchSampler(windows, micro_batch, 1, 0, seed, group_by_length=True)
    out = []
    for _, idx in zip(range(n_batches), sampler):
        c, cl = pad_right([ctx[i] for i in idx], 0)
        y, yl = pad_right([cont[i] for i in idx], 0)
        out.append({"context": c, "context_len": cl, "continuation": y, "continuation_len": yl})
    return out


def sentence_lengths(rng, n: int, seq: int):
    """Sentences of 8-64 tokens, lognormal around 24 (stage 2's wiki1m sentences)."""
    return _lognormal_lengths(rng, n, 24, 0.5, 8, min(64, seq))


def query_lengths(rng, n: int, seq: int):
    """Stage-3 queries with their instruction: lognormal around 40 tokens, 12-128."""
    return _lognormal_lengths(rng, n, 40, 0.35, 12, min(128, seq))


def passage_lengths(rng, n: int, seq: int):
    """Stage-3 positives and hard negatives (E5-mixture passages): lognormal around 150 tokens, up to 512
    (the recipes' ``prep pairs --max-tokens``), capped at ``seq``."""
    return _lognormal_lengths(rng, n, 150, 0.8, 16, min(512, seq))


def contrast_batches(stage: str, n_batches: int, micro_batch: int, seq: int, vocab: int, negatives: int,
                     seed: int = SEED) -> list[dict]:
    """Batches shaped as ``SentenceBatches`` (ucl) / ``PairBatches`` (scl) yield them: random order."""
    import numpy as np

    from trainer.data.padding import pad_right

    rng = np.random.default_rng(seed)

    def rows(n: int, lengths=sentence_lengths):
        return pad_right(_token_rows(rng, lengths(rng, n, seq), vocab), 0)

    out = []
    for _ in range(n_batches):
        if stage == "ucl":
            ids, lengths = rows(micro_batch)
            out.append({"ids": ids, "lengths": lengths})
        else:
            (q, ql), (p, pl) = rows(micro_batch, query_lengths), rows(micro_batch, passage_lengths)
            ng, nl = rows(micro_batch * negatives, passage_lengths)
            out.append({"query": q, "query_len": ql, "positive": p, "positive_len": pl,
                        "negative": ng, "negative_len": nl})
    return out


def encode_texts(n: int, seq: int, vocab: int, seed: int = SEED) -> list[list[int]]:
    """Texts of 8-512 tokens (capped at ``seq``), lognormal around 64: queries to passages."""
    import numpy as np

    rng = np.random.default_rng(seed)
    return _token_rows(rng, _lognormal_lengths(rng, n, 64, 0.9, 8, min(512, seq)), vocab)


def batch_tokens(stage: str, batch: dict) -> int:
    """Real tokens of one batch, as the stages report them (LossOutput.tokens)."""
    if stage == "pretrain":
        return int(batch["context_len"].sum() + batch["continuation_len"].sum())
    if stage == "ucl":
        return 2 * int(batch["lengths"].sum())
    return int(batch["query_len"].sum() + batch["positive_len"].sum() + batch["negative_len"].sum())
