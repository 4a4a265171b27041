"""Stage 1's training-step memory at a 7B model's width, with and without gradient checkpointing, measured on
the CPU and extrapolated by layer count: does the 7B recipe's micro-batch of 4 need checkpointing on 80 GB?

A 7B model does not fit this machine, but one layer of it does: the step's own memory (activations kept for
backward, the LM-head chunks, gradients, LoRA's optimizer state) is measured with 1 and 2 decoder layers of
the llama2-7b shape (hidden 4096, MLP 11008, 32 heads, vocab 32000, bf16; `--arch mistral-7b`: MLP 14336,
8 KV heads), the project's own stage-1 step
(``PretrainTask`` loss and update, KL, K=8, LoRA r16 on q,v,o,gate,up,down). What one more layer adds is the
per-layer cost; 32 layers are the 1-layer figure plus 31 of it, plus the frozen bf16 weights.

The batch is the heaviest of 20 length-grouped micro-batches of Wikipedia-like windows <= 512 tokens
(``bench/trainstep/synthetic.py``): peak memory is set by the longest batch. Each configuration runs in a
fresh process: a warm-up step on a small batch (optimizer state, thread pools), then the measured step;
its memory is ``ru_maxrss`` after it minus RSS before it.

Caveat: the CPU's attention kernels are not the GPU's; with a padding mask PyTorch's CPU SDPA may keep an
attention matrix per layer that FlashAttention on the GPU does not, so these figures bound the GPU's from
above. bench/session.py's ``pretrain`` part measures the real thing when a GPU is lent.

    .venv/bin/python bench/activation_memory.py [--layers 1 2] [--micro-batch 4]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from trainstep.archs import ARCHS, MIB, REPO  # noqa: E402

GIB = 1024 * MIB


def worker(arch: str, layers: int, checkpointing: bool, micro_batch: int) -> dict:
    import resource

    import psutil
    import torch

    sys.path.insert(0, REPO)
    import train_step

    torch.set_num_threads(os.cpu_count() or 1)
    cls, fields, prefix = ARCHS[arch]
    ARCHS["probe"] = (cls, {**fields, "num_hidden_layers": layers}, prefix)
    argv = ["--stage", "pretrain", "--model-config", "probe", "--device", "cpu", "--dtype", "bfloat16", "--seq", "512",
            "--micro-batch", str(micro_batch), "--steps", "1", "--warmup", "0", "--threads", "0"]
    a = train_step.parse_args(argv + (["--gradient-checkpointing"] if checkpointing else []))
    model = train_step.build_project_model(a, "pretrain")
    step, _ = train_step.project_step(a, "pretrain", model)
    batches = train_step.compression_batches(20, micro_batch, 512, a.vocab)
    heavy = max(batches, key=lambda b: int(b["context_len"].sum() + b["continuation_len"].sum()))
    small = train_step.compression_batches(1, 1, 64, a.vocab)[0]
    step(small)  # warm-up: optimizer state allocated, kernels and thread pools up
    proc = psutil.Process()
    rss0 = proc.memory_info().rss
    t = time.perf_counter()
    loss = step(heavy)
    secs = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"layers": layers, "gradient_checkpointing": checkpointing, "step_mib": (peak - rss0) / MIB,
            "seconds": secs, "loss": loss, "tokens": int(heavy["context_len"].sum() + heavy["continuation_len"].sum()),
            "longest_window": int((heavy["context_len"] + heavy["continuation_len"]).max())}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--arch", default="llama2-7b", choices=[n for n in ARCHS if n.endswith(("7b", "8b"))])
    p.add_argument("--layers", type=int, nargs=2, default=[1, 2])
    p.add_argument("--micro-batch", type=int, default=4)
    p.add_argument("--json", default=os.path.join(REPO, "bench", "out", "activation_memory.json"))
    p.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker:
        print(json.dumps(worker(a.arch, int(a.worker[0]), a.worker[1] == "1", a.micro_batch)))
        return 0
    from _env import env_info

    rows = []
    for checkpointing in (True, False):
        for layers in a.layers:
            cmd = [sys.executable, os.path.abspath(__file__), "--worker", str(layers), str(int(checkpointing)),
                   "--micro-batch", str(a.micro_batch), "--arch", a.arch]
            r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
            if r.returncode:
                sys.exit(f"{layers} layer(s), checkpointing {checkpointing}: failed\n{r.stderr[-3000:]}")
            rows.append(json.loads(r.stdout.strip().splitlines()[-1]))
            print(f"  {layers} layer(s), checkpointing {checkpointing}: {rows[-1]['step_mib']:,.0f} MiB, "
                  f"{rows[-1]['seconds']:.1f} s", file=sys.stderr)
    f = ARCHS[a.arch][1]
    kv = f["num_key_value_heads"] * f["hidden_size"] // f["num_attention_heads"]
    params = f["num_hidden_layers"] * (2 * f["hidden_size"] ** 2 + 2 * f["hidden_size"] * kv
                                       + 3 * f["hidden_size"] * f["intermediate_size"]) + 2 * f["vocab_size"] * f["hidden_size"]
    weights = 2 * params / GIB  # bf16, frozen
    lo, hi = a.layers
    out = {}
    for checkpointing in (True, False):
        m = {r["layers"]: r["step_mib"] for r in rows if r["gradient_checkpointing"] == checkpointing}
        per_layer = (m[hi] - m[lo]) / (hi - lo)
        at_32 = (m[lo] + (f["num_hidden_layers"] - lo) * per_layer) / 1024
        out["on" if checkpointing else "off"] = {"per_layer_mib": per_layer, "step_gib_at_32_layers": at_32,
                                                 "total_gib_at_32_layers": at_32 + weights}
    info = env_info("cpu")
    print(f"device: {info['device_name']}   commit: {info['commit']}   date: {info['date']}")
    print(f"{a.arch} width, micro-batch {a.micro_batch}, heaviest batch: {rows[0]['tokens']} tokens, "
          f"longest window {rows[0]['longest_window']}; frozen bf16 weights of 32 layers: {weights:.1f} GiB")
    print("| checkpointing | step MiB, 1 layer | step MiB, 2 layers | per layer MiB | step GiB at 32 layers | with weights GiB |")
    print("|---|---:|---:|---:|---:|---:|")
    for key, v in out.items():
        m = {r["layers"]: r["step_mib"] for r in rows if r["gradient_checkpointing"] == (key == "on")}
        print(f"| {key} | {m[lo]:,.0f} | {m[hi]:,.0f} | {v['per_layer_mib']:,.0f} | {v['step_gib_at_32_layers']:.1f} | "
              f"{v['total_gib_at_32_layers']:.1f} |")
    os.makedirs(os.path.dirname(os.path.abspath(a.json)), exist_ok=True)
    with open(a.json, "w") as fh:
        json.dump({**info, "rows": rows, "extrapolated": out, "weights_gib": weights}, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
