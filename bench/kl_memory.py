"""Peak memory and time of one forward+backward of the token-level KL loss through the LM head.

Compares ``trainer.objectives.vocab_loss.chunked_vocab_loss`` (``chunk`` tokens through the head at a
time, each chunk's gradient computed in forward) against the straightforward computation:
``logits_s = head(h).float()``, ``logits_t = head(t).float()`` under no_grad,
``F.kl_div(log_softmax(s), log_softmax(t), log_target=True, reduction="none").sum(-1)``, weighted sum,
``.backward()`` -- whole [N, V] fp32 tensors at once. Both use the same frozen
``nn.Linear(H, V, bias=False)`` head, in the same dtype, and the same seeded inputs.

Each variant runs in a fresh subprocess. After the inputs and head are allocated and the op has run once
on 8 tokens (library initialisation excluded), the step's own working memory is measured:

* CUDA: ``max_memory_allocated()`` during the step minus ``memory_allocated()`` before it;
* CPU:  ``ru_maxrss`` after the step minus the current RSS before it (exact when the step sets a new
  high-water mark, which it does here); a 5 ms psutil sampler is the fallback and is reported too.

Loss and gradient (w.r.t. the student hidden states) are compared against the naive variant.
Goal (from the issue): peak memory of chunked <= 0.25x naive. Run from the repository root:

    .venv/bin/python bench/kl_memory.py                      # V=49152, N=8192, H=576, chunks 512/1024/2048
    .venv/bin/python bench/kl_memory.py --hidden 960 --chunks 256 1024 --dtype bfloat16

It prints a table and writes everything to ``bench/out/kl_memory.json`` (``--json``).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time

from _env import env_info  # noqa: E402  (bench/ is on sys.path when run as a script)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MIB = 1024 * 1024
GOAL = 0.25


def _step(variant, chunk, h, t, w, head):
    import torch
    import torch.nn.functional as F
    from trainer.objectives.vocab_loss import chunked_vocab_loss
    if variant == "naive":
        logits_s = head(h).float()
        with torch.no_grad():
            logits_t = head(t).float()
        kl = F.kl_div(F.log_softmax(logits_s, -1), F.log_softmax(logits_t, -1), log_target=True, reduction="none").sum(-1)
        loss = (kl * w).sum()
    else:
        loss = chunked_vocab_loss(h, w, head, teacher_hidden=t, chunk=chunk)
    loss.backward()
    return loss.detach()


def worker(a) -> dict:
    """Runs in the subprocess: one measured step of one variant; prints a JSON line, saves the gradient."""
    import gc, resource, threading
    import psutil, torch
    sys.path.insert(0, REPO)
    dev, dtype = torch.device(a.device), getattr(torch, a.dtype)
    torch.manual_seed(0)
    head = torch.nn.Linear(a.hidden, a.vocab, bias=False).requires_grad_(False).to(dev, dtype)
    g = torch.Generator().manual_seed(1)
    h = torch.randn(a.tokens, a.hidden, generator=g).to(dev, dtype).requires_grad_(True)
    t = (h.detach().float() + 0.5 * torch.randn(a.tokens, a.hidden, generator=g).to(dev)).to(dtype)
    w = torch.rand(a.tokens, generator=g).to(dev)
    hw = h.detach()[:8].clone().requires_grad_(True)
    _step(a.variant, a.chunk, hw, t[:8], w[:8], head)  # warm-up: library init, thread pools
    del hw
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
    loss = _step(a.variant, a.chunk, h, t, w, head)
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
    torch.save(h.grad.float().cpu(), a.grad_out)
    return {"peak_mib": peak / MIB, "sampled_peak_mib": (sampled[0] - rss0) / MIB if dev.type == "cpu" else None,
            "measured_by": how, "seconds": secs, "loss": float(loss)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--vocab", type=int, default=49152)
    p.add_argument("--tokens", type=int, default=8192)
    p.add_argument("--hidden", type=int, default=576, help="hidden size (SmolLM2-135M: 576)")
    p.add_argument("--chunks", type=int, nargs="+", default=[512, 1024, 2048])
    p.add_argument("--device", default=None, help="cpu | cuda (default: cuda if available)")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default=None, help="default: float32 on CPU, bfloat16 on CUDA")
    p.add_argument("--json", default=os.path.join(REPO, "bench", "out", "kl_memory.json"))
    p.add_argument("--variant", help=argparse.SUPPRESS)  # internal: worker mode
    p.add_argument("--chunk", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--grad-out", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.variant:
        print(json.dumps(worker(a)))
        return 0
    import torch
    a.device = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
    a.dtype = a.dtype or ("bfloat16" if a.device.startswith("cuda") else "float32")
    info = env_info(a.device)
    common = ["--vocab", a.vocab, "--tokens", a.tokens, "--hidden", a.hidden, "--device", a.device, "--dtype", a.dtype]
    rows, grads = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for variant, chunk in [("naive", 0)] + [("chunked", c) for c in a.chunks]:
            gpath = os.path.join(tmp, f"{variant}{chunk}.pt")
            cmd = [sys.executable, os.path.abspath(__file__), "--variant", variant, "--chunk", chunk, "--grad-out", gpath, *common]
            out = subprocess.run([str(c) for c in cmd], cwd=REPO, capture_output=True, text=True)
            if out.returncode:
                sys.exit(f"{variant} chunk={chunk} failed:\n{out.stderr}")
            r = json.loads(out.stdout.strip().splitlines()[-1])
            grads[(variant, chunk)] = torch.load(gpath)
            rows.append({"variant": variant, "chunk": chunk or None, "vocab": a.vocab, "tokens": a.tokens, "hidden": a.hidden,
                         "dtype": a.dtype, "device": a.device, **r})
            print(f"  ran {variant:7s} chunk={chunk or '-':>4}: {r['peak_mib']:.0f} MiB, {r['seconds']:.2f} s", file=sys.stderr)
    naive = rows[0]
    for r in rows:
        r["ratio_vs_naive"] = r["peak_mib"] / naive["peak_mib"]
        r["max_abs_dloss"] = abs(r["loss"] - naive["loss"])
        r["max_abs_dgrad"] = float((grads[(r["variant"], r["chunk"] or 0)] - grads[("naive", 0)]).abs().max())
        r["goal_pass"] = None if r["variant"] == "naive" else r["ratio_vs_naive"] <= GOAL

    print(f"device: {info['device_name']}\ncommit: {info['commit']}   torch {info['torch']}   date: {info['date']}")
    hdr = f"{'variant':8s} {'chunk':>5s} {'vocab':>6s} {'tokens':>6s} {'hidden':>6s} {'dtype':>8s} {'device':>6s} " \
          f"{'peak MiB':>9s} {'ratio':>6s} {'seconds':>8s} {'|dloss|':>9s} {'|dgrad|':>9s}  goal<={GOAL}x"
    print(hdr + "\n" + "-" * len(hdr))
    for r in rows:
        goal = "-" if r["goal_pass"] is None else ("PASS" if r["goal_pass"] else "FAIL")
        print(f"{r['variant']:8s} {r['chunk'] or '-':>5} {r['vocab']:>6} {r['tokens']:>6} {r['hidden']:>6} {r['dtype']:>8s} "
              f"{r['device']:>6s} {r['peak_mib']:>9.1f} {r['ratio_vs_naive']:>6.3f} {r['seconds']:>8.2f} "
              f"{r['max_abs_dloss']:>9.2e} {r['max_abs_dgrad']:>9.2e}  {goal}")
    print(f"loss (naive) = {naive['loss']:.6f}; peak = the step's own working memory ({naive['measured_by']})")
    os.makedirs(os.path.dirname(os.path.abspath(a.json)), exist_ok=True)
    with open(a.json, "w") as f:
        json.dump({"goal": f"peak memory of chunked <= {GOAL}x of naive", **info, "rows": rows}, f, indent=2)
    print(f"wrote {a.json}")
    return 0 if all(r["goal_pass"] in (None, True) for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
