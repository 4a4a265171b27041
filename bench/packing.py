"""Padding against length grouping against packing, at the length mix of Wikipedia windows up to 512 tokens.

    .venv/bin/python bench/packing.py [--batches 6 --micro-batch 8 --rows 512 1024 2048 4096] [--device cpu]

For each layout of the same samples -- random batches padded to their longest window (what stage 2/3 and
an unsorted encode see), length-grouped batches (the stage-1 sampler), and random batches packed into rows
of up to N tokens (``data.packing``) -- it reports:
- useful tokens per computed token: real tokens / positions the decoder runs on;
- useful attention pairs per computed pair: pairs within a sequence / pairs the kernel computes (a packed
  row through SDPA with a block mask computes every pair of the row; flash-attn's variable-length kernels,
  on a GPU, compute only the useful ones);
- tokens/s of the encoder E's forward and backward (memory tokens appended, LoRA on, bidirectional), on a
  small random Llama-shaped model (``--hidden``/``--layers``), median over batches.
Windows: documents lognormal around 400 tokens cut into balanced windows of at most 512 (as
``llm2comp prep compression`` cuts them), the same synthetic mix as bench/train_step.py.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from trainstep.archs import REPO  # noqa: E402

sys.path.insert(0, REPO)


def windows(n: int, seed: int = 0) -> list[int]:
    import numpy as np

    from data_prep.windows import window_bounds

    rng = np.random.default_rng(seed)
    out = []
    while len(out) < n:
        doc = int(np.clip(np.round(rng.lognormal(np.log(400), 1.0)), 20, 20000))
        out += [e - s for s, e in window_bounds(doc, 512) if e - s >= 20]
    return [int(x) for x in rng.permutation(out)[:n]]


def layouts(lengths: list[int], micro_batch: int, rows: list[int]) -> dict:
    """Per layout: batches as lists of sample indices, and the packing row size (None: padded)."""
    import numpy as np

    from trainer.data.sampler import LengthGroupedBatchSampler

    n = len(lengths) // micro_batch * micro_batch
    rng = np.random.default_rng(1)
    random = [list(b) for b in rng.permutation(n).reshape(-1, micro_batch)]
    sampler = LengthGroupedBatchSampler(lengths[:n], micro_batch, 1, 0, seed=1, group_by_length=True)
    grouped = [b for _, b in zip(range(len(random)), sampler)]
    out = {"random, padded": (random, None), "length-grouped, padded": (grouped, None)}
    for r in rows:
        out[f"random, packed in rows of {r}"] = (random, r)
    return out


def efficiency(lengths: list[int], batches, rows) -> tuple[float, float]:
    import torch

    from trainer.modeling.packing import layout

    real = sum(lengths[i] for b in batches for i in b)
    useful_pairs = sum(lengths[i] ** 2 for b in batches for i in b)
    computed = pairs = 0
    for b in batches:
        ls = [lengths[i] for i in b]
        if rows is None:
            computed += len(ls) * max(ls)
            pairs += len(ls) * max(ls) ** 2
        else:
            lay = layout(torch.tensor(ls), rows)
            computed += lay.rows * lay.width
            pairs += lay.rows * lay.width ** 2
    return real / computed, useful_pairs / pairs


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batches", type=int, default=6)
    p.add_argument("--micro-batch", type=int, default=8)
    p.add_argument("--rows", type=int, nargs="+", default=[512, 1024, 2048, 4096])
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=os.path.join(REPO, "bench", "out", "packing.json"))
    a = p.parse_args()
    import torch
    import transformers

    from _env import env_info
    from trainer.modeling.adapters import LoraSettings
    from trainer.modeling.compressor import build_compressor
    from trainer.data.padding import pad_right

    torch.set_num_threads(a.threads)
    lengths = windows(a.batches * a.micro_batch)
    cfg = transformers.LlamaConfig(vocab_size=49152, hidden_size=a.hidden, intermediate_size=int(a.hidden * 2.7),
                                   num_hidden_layers=a.layers, num_attention_heads=a.hidden // 64,
                                   num_key_value_heads=a.hidden // 64, max_position_embeddings=4096,
                                   tie_word_embeddings=True)
    torch.manual_seed(0)
    base = transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa").to(a.device)
    model = build_compressor(base, 8, [1], 0, LoraSettings(r=16, alpha=32, dropout=0.0)).to(a.device).train()
    g = torch.Generator().manual_seed(2)
    texts = [torch.randint(3, 49152, (n,), generator=g).tolist() for n in lengths]
    results = []
    for name, (batches, rows) in layouts(lengths, a.micro_batch, a.rows).items():
        model.packing = rows
        times, tokens = [], []
        for i, b in enumerate(batches):
            ids, lens = pad_right([texts[j] for j in b], 0)
            ids, lens = ids.to(a.device), lens.to(a.device)
            t0 = time.perf_counter()
            model.memory_states(ids, lens).float().pow(2).mean().backward()
            if a.device.startswith("cuda"):
                torch.cuda.synchronize()
            if i:  # the first batch warms up
                times.append(time.perf_counter() - t0)
                tokens.append(int(lens.sum()))
            model.zero_grad(set_to_none=True)
        useful, pair_eff = efficiency(lengths, batches, rows)
        results.append({"layout": name, "useful_tokens_per_computed": useful, "useful_pairs_per_computed": pair_eff,
                        "tokens_per_s": statistics.median(n / t for n, t in zip(tokens, times))})
    info = env_info(a.device)
    print(f"device: {info['device_name']}; commit {info['commit']}; {info['date']}")
    print(f"{len(lengths)} windows (median {statistics.median(lengths)} tokens, max {max(lengths)}), "
          f"micro-batch {a.micro_batch}; E forward+backward, Llama-shaped hidden {a.hidden} x {a.layers} layers, "
          f"sdpa, {a.threads} thread(s)\n")
    print("| layout | useful tokens / computed | useful attention pairs / computed | tokens/s (E fwd+bwd) |")
    print("|---|---:|---:|---:|")
    for r in results:
        print(f"| {r['layout']} | {r['useful_tokens_per_computed']:.3f} | {r['useful_pairs_per_computed']:.3f} | "
              f"{r['tokens_per_s']:,.0f} |")
    os.makedirs(os.path.dirname(a.json), exist_ok=True)
    with open(a.json, "w") as fh:
        json.dump({**info, "args": vars(a), "lengths": lengths, "results": results}, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
