"""Peak memory and time of one contrastive (UCL) training step, with and without gradient caching.

One step = forward + SimCSE loss + backward on B sentences, each encoded twice (2B rows, one dropout seed
per row), through a random Llama-shaped decoder wrapped by ``build_compressor`` (LoRA r=16, dropout 0.05,
row-seeded attention dropout 0.2, K=8 memory tokens), fp32 on CPU / bf16 on CUDA:

* ``cached``:   ``encode_without_graph`` (chunk rows at a time) -> ``loss_and_row_gradients`` -> ``replay``;
* ``uncached``: one ``encode`` of all 2B rows with a graph, the loss, ``.backward()``.

Each (variant, batch) runs in a fresh subprocess. After the model is built and a warm-up step at B=2 has
run (library initialisation excluded), the step's own working memory is measured like bench/kl_memory.py:
CUDA ``max_memory_allocated()`` minus ``memory_allocated()`` before; CPU ``ru_maxrss`` after the step
minus RSS before (a 5 ms psutil sampler is the fallback). Cached and uncached losses are compared per
batch. Expectation (from the issue): cached peak flat in B at a fixed chunk, uncached growing with B.
Run from the repository root:

    .venv/bin/python bench/gradcache_memory.py                     # B in 64 512, chunk 16, seq 32
    .venv/bin/python bench/gradcache_memory.py --batches 64 256 --chunk 32 --seq 16

It prints a table and writes everything to ``bench/out/gradcache_memory.json`` (``--json``).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from _env import env_info  # noqa: E402  (bench/ is on sys.path when run as a script)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MIB = 1024 * 1024
FLAT = 1.3  # cached peak(B max) / peak(B min) below this counts as flat


def _build(a, dev, dtype):
    import torch, transformers
    from trainer.modeling.adapters import LoraSettings
    from trainer.modeling.dropout import enable_row_seeded_dropout
    from trainer.modeling.compressor import build_compressor
    cfg = transformers.LlamaConfig(vocab_size=a.vocab, hidden_size=a.hidden, intermediate_size=a.intermediate,
                                   num_hidden_layers=a.layers, num_attention_heads=4, num_key_value_heads=2,
                                   max_position_embeddings=a.seq + 64, tie_word_embeddings=False)
    torch.manual_seed(0)
    base = transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa").to(dtype)
    comp = build_compressor(base, 8, [1], pad_id=0, lora=LoraSettings(r=16, alpha=32, dropout=0.05), seed=0)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # LoRA B starts at zero: make the adapter (and its dropout) matter
        for n, p in comp.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    enable_row_seeded_dropout(comp, 0.2)  # as ContrastTask does
    return comp.to(dev).train()


def _step(variant, comp, b, a, dev):
    """One UCL training step on b sentences (2b rows); returns the loss."""
    import torch
    from trainer.engine.gradcache import Rows, encode, encode_without_graph, loss_and_row_gradients, replay
    from trainer.objectives.contrastive import gather_groups, unsupervised_loss
    g = torch.Generator().manual_seed(b)
    ids = torch.randint(3, a.vocab, (b, a.seq), generator=g)
    rows = Rows(torch.cat([ids, ids]).to(dev), torch.full((2 * b,), a.seq, device=dev), torch.arange(2 * b) * 7919 + 11)
    loss_fn = lambda x: unsupervised_loss(gather_groups(x, {"view1": b, "view2": b}), 0.05)
    embed = lambda i, n: comp.embed_texts(i, n)
    comp.zero_grad(set_to_none=True)
    if variant == "cached":
        loss, grad = loss_and_row_gradients(encode_without_graph(embed, rows, a.chunk), loss_fn)
        replay(embed, rows, grad, a.chunk, backward=lambda l: l.backward(), step=lambda: None)
    else:
        loss = loss_fn(encode(embed, rows))
        loss.backward()
    return float(loss.detach())


def worker(a) -> dict:
    import gc, resource, threading
    import psutil, torch
    sys.path.insert(0, REPO)
    dev = torch.device(a.device)
    comp = _build(a, dev, torch.bfloat16 if dev.type == "cuda" else torch.float32)
    _step(a.variant, comp, 2, a, dev)  # warm-up: library init, thread pools, grad buffers
    gc.collect()
    proc, scale = psutil.Process(), (1 if sys.platform == "darwin" else 1024)
    if dev.type == "cuda":
        torch.cuda.synchronize(); before = torch.cuda.memory_allocated(); torch.cuda.reset_peak_memory_stats()
    rss0, maxrss0, sampled, stop = proc.memory_info().rss, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale, [0], threading.Event()

    def sample():
        while not stop.is_set():
            sampled[0] = max(sampled[0], proc.memory_info().rss); time.sleep(0.005)
    th = threading.Thread(target=sample, daemon=True); th.start()
    t0 = time.perf_counter()
    loss = _step(a.variant, comp, a.batch, a, dev)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    secs = time.perf_counter() - t0
    stop.set(); th.join()
    maxrss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
    if dev.type == "cuda":
        peak, how = torch.cuda.max_memory_allocated() - before, "cuda max_memory_allocated"
    elif maxrss1 > maxrss0:
        peak, how = maxrss1 - rss0, "ru_maxrss"
    else:
        peak, how = max(sampled[0], proc.memory_info().rss) - rss0, "psutil sampler"
    return {"peak_mib": peak / MIB, "sampled_peak_mib": (sampled[0] - rss0) / MIB if dev.type == "cpu" else None,
            "measured_by": how, "seconds": secs, "loss": loss}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batches", type=int, nargs="+", default=[64, 512], help="sentences per step (rows = 2x)")
    p.add_argument("--chunk", type=int, default=16, help="rows per chunk of the cached variant")
    p.add_argument("--seq", type=int, default=32, help="tokens per sentence")
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--intermediate", type=int, default=688)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--device", default=None, help="cpu | cuda (default: cuda if available)")
    p.add_argument("--json", default=os.path.join(REPO, "bench", "out", "gradcache_memory.json"))
    p.add_argument("--variant", help=argparse.SUPPRESS)  # internal: worker mode
    p.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    import torch
    a.device = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if a.variant:
        print(json.dumps(worker(a)))
        return 0
    info = env_info(a.device)
    common = ["--chunk", a.chunk, "--seq", a.seq, "--hidden", a.hidden, "--intermediate", a.intermediate,
              "--layers", a.layers, "--vocab", a.vocab, "--device", a.device]
    rows = []
    for b in a.batches:
        for variant in ("cached", "uncached"):
            cmd = [sys.executable, os.path.abspath(__file__), "--variant", variant, "--batch", b, *common]
            out = subprocess.run([str(c) for c in cmd], cwd=REPO, capture_output=True, text=True)
            if out.returncode:
                sys.exit(f"{variant} B={b} failed:\n{out.stderr}")
            r = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append({"variant": variant, "batch": b, "rows": 2 * b, "chunk": a.chunk if variant == "cached" else None,
                         "seq": a.seq, "device": a.device, **r})
            print(f"  ran {variant:8s} B={b:4d}: {r['peak_mib']:.0f} MiB, {r['seconds']:.2f} s", file=sys.stderr)
    by = {(r["variant"], r["batch"]): r for r in rows}
    for r in rows:
        other = by[("uncached" if r["variant"] == "cached" else "cached", r["batch"])]
        r["abs_dloss"] = abs(r["loss"] - other["loss"])
    lo, hi = min(a.batches), max(a.batches)
    ratios = {v: by[(v, hi)]["peak_mib"] / by[(v, lo)]["peak_mib"] for v in ("cached", "uncached")}

    print(f"device: {info['device_name']}\ncommit: {info['commit']}   torch {info['torch']}   date: {info['date']}")
    print(f"model: llama hidden={a.hidden} layers={a.layers} inter={a.intermediate} vocab={a.vocab}, K=8, seq={a.seq}, "
          f"LoRA r=16 p=0.05, attn dropout 0.2 (row-seeded)")
    hdr = f"{'variant':8s} {'batch':>5s} {'rows':>5s} {'chunk':>5s} {'peak MiB':>9s} {'seconds':>8s} {'loss':>9s} {'|dloss|':>9s}"
    print(hdr + "\n" + "-" * len(hdr))
    for r in rows:
        print(f"{r['variant']:8s} {r['batch']:>5} {r['rows']:>5} {r['chunk'] or '-':>5} {r['peak_mib']:>9.1f} "
              f"{r['seconds']:>8.2f} {r['loss']:>9.3g} {r['abs_dloss']:>9.2e}")
    flat = ratios["cached"] < FLAT
    print(f"peak(B={hi})/peak(B={lo}): cached {ratios['cached']:.2f} ({'flat' if flat else 'NOT flat'}, < {FLAT}), "
          f"uncached {ratios['uncached']:.2f} ({'grows' if ratios['uncached'] > ratios['cached'] else 'does not grow'})")
    print(f"peak = the step's own working memory ({rows[0]['measured_by']})")
    os.makedirs(os.path.dirname(os.path.abspath(a.json)), exist_ok=True)
    with open(a.json, "w") as f:
        json.dump({"expectation": f"cached peak ratio < {FLAT} (flat), uncached growing with batch", "ratios": ratios,
                   "cached_flat": flat, **info, "rows": rows}, f, indent=2)
    print(f"wrote {a.json}")
    return 0 if flat else 1


if __name__ == "__main__":
    sys.exit(main())
