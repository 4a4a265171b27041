"""Token positions a stage-3 step encodes with gradient-cache chunks cut in batch order against chunks cut
from the rows sorted by length (``contrast.chunk_by_length``), at the recipe's shapes: one rank's share of
the global batch (queries ~40 tokens, passages lognormal up to 512: ``bench/trainstep/synthetic.py``).

    .venv/bin/python bench/chunk_padding.py [--micro-batch 128] [--chunks 16 32 64] [--batches 20]

Counts, not timings: every position (real, padding, the first token and the K memory tokens) is encoded
twice per step (gradient caching's two passes), so compute scales with these counts on any device.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from trainstep.archs import MEMORY_TOKENS, REPO  # noqa: E402
from trainstep.synthetic import contrast_batches  # noqa: E402

sys.path.insert(0, REPO)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--micro-batch", type=int, default=128, help="queries per rank (llama2-7b-scl: 1,024 / 8 GPUs)")
    p.add_argument("--negatives", type=int, default=1)
    p.add_argument("--chunks", type=int, nargs="+", default=[16, 32, 64])
    p.add_argument("--seq", type=int, default=512)
    p.add_argument("--prefix", type=int, default=1, help="first-token positions a row (BOS)")
    p.add_argument("--batches", type=int, default=20)
    a = p.parse_args(argv)
    from trainer.engine.dist import World
    from trainer.engine.settings import TrainSettings
    from trainer.stages.contrast import ContrastRecipe, ContrastSettings, ContrastTask

    batches = contrast_batches("scl", a.batches, a.micro_batch, a.seq, 32000, a.negatives)
    extra = MEMORY_TOKENS + a.prefix
    print(f"scl, {a.micro_batch} queries x (1 + 1 + {a.negatives}) rows per rank, {a.batches} batches, "
          f"K={MEMORY_TOKENS}, first token {a.prefix}")
    print("| chunk | real positions / step | batch order: computed (x real) | sorted by length: computed (x real) | saved |")
    print("|---:|---:|---:|---:|---:|")
    for chunk in a.chunks:
        task = ContrastTask(ContrastRecipe(contrast=ContrastSettings(kind="scl", chunk=chunk, negatives=a.negatives),
                                           train=TrainSettings(micro_batch=a.micro_batch)))
        task.world, task.pad_id = World(0, 1, 0), 0
        real = plain = grouped = 0
        for b in batches:
            rows, _ = task.rows(b, 0, 0)
            real += int(rows.lengths.sum()) + len(rows) * extra
            plain += rows.padded_tokens(chunk, False) + len(rows) * extra
            grouped += rows.padded_tokens(chunk, True) + len(rows) * extra
        n = len(batches)
        print(f"| {chunk} | {real / n:,.0f} | {plain / n:,.0f} ({plain / real:.2f}) | {grouped / n:,.0f} "
              f"({grouped / real:.2f}) | {1 - grouped / plain:.0%} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
