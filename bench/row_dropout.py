"""Cost of row-seeded dropout (``trainer/modeling/row_dropout.py``) against torch's dropout, on one LoRA input.

Contrastive stages put row-seeded dropout on the input of every LoRA projection (six a layer), so its
elementwise cost adds up: on a 2-core CPU it was 40 % of a SmolLM2-135M ucl step (py-spy) before
``row_keep`` replaced the float-uniform hash. This times forward + backward of one dropout on a
[rows, tokens, features] activation: the previous mask (``--previous``, the float-uniform hash, kept here
only to compare), the current one, torch's ``F.dropout``, and the base projection's matmul for scale.

    .venv/bin/python bench/row_dropout.py [--rows 64 --tokens 38 --features 1536] [--device cuda]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from trainer.modeling import row_dropout as rd  # noqa: E402


def previous_row_dropout(x: torch.Tensor, p: float, salt: int, seeds: torch.Tensor) -> torch.Tensor:
    """The mask before ``row_keep``: every coordinate through the full hash, then a float uniform."""
    shape, device = tuple(x.shape[1:]), x.device
    h = rd._mix((seeds.to(device=device, dtype=torch.int64) & rd._M32) ^ (salt * 0x61C88647 & rd._M32))
    h = h.view(-1, *([1] * len(shape)))
    for d, n in enumerate(shape):
        coord = torch.arange(n, device=device, dtype=torch.int64) * rd._COORD[d % len(rd._COORD)]
        h = rd._mix((h + coord.view(*([1] * d), n, *([1] * (len(shape) - d - 1)))) & rd._M32)
    keep = h.to(torch.float32) / 4294967296.0 >= p
    return x * keep.to(x.dtype) / (1.0 - p)


def timed(fn, device: str, repeats: int) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=64)
    ap.add_argument("--tokens", type=int, default=38)
    ap.add_argument("--features", type=int, default=1536)
    ap.add_argument("--p", type=float, default=0.05)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    if args.device == "cpu":
        torch.set_num_threads(args.threads)
    seeds = torch.arange(args.rows, device=args.device) * 7919 + 11
    print(f"dropout p={args.p} on [{args.rows}, {args.tokens}, {args.features}], {args.device}; "
          f"forward + backward, median of {args.repeats} (ms)\n")
    print("| dtype | previous row-seeded | row-seeded (row_keep) | torch F.dropout | matmul to 576 (fwd) |")
    print("|---|---:|---:|---:|---:|")
    for dtype in (torch.float32, torch.bfloat16):
        x = torch.randn(args.rows, args.tokens, args.features, dtype=dtype, device=args.device, requires_grad=True)
        w = torch.randn(args.features, 576, dtype=dtype, device=args.device)
        cells = [timed(lambda: previous_row_dropout(x, args.p, 3, seeds).sum().backward(), args.device, args.repeats),
                 timed(lambda: rd.row_dropout(x, args.p, 3, seeds).sum().backward(), args.device, args.repeats),
                 timed(lambda: torch.nn.functional.dropout(x, args.p, True).sum().backward(), args.device, args.repeats),
                 timed(lambda: x.detach() @ w, args.device, args.repeats)]
        print(f"| {str(dtype).split('.')[1]} | " + " | ".join(f"{c:.1f}" for c in cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
