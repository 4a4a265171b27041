"""Correctness checks that only a GPU can settle, in one run: what bench/gpu_session.sh runs first.

    .venv/bin/python bench/gpu_checks.py --out DIR [--model-config qwen2-1.5b] [--smoke]

1. losses: the project's path against the reimplemented reference approach (bench/trainstep/reference.py)
   in bf16 with the same weights, for kl, nll and rc (relative difference; fp32 on CPU is 1e-4);
2. bidirectionality under every SDPA backend (math, memory-efficient, flash, cuDNN), with and without
   padding: the encoder call moves position 0 when the last token changes, the causal call does not, and a
   padded row equals the row alone;
3. packing: a packed encoder pass against each sequence alone (max relative difference of the states);
4. row-seeded dropout: the compiled mask equals the eager one bit for bit, and the kernels each launches
   (torch.profiler).
``--smoke`` runs the same code on the CPU with the tiny architecture (it is part of ``make test``). Writes
DIR/gpu_checks.json and prints one line per check; exit 1 if a check fails.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # bench/: trainstep, _env

from trainstep.archs import ARCHS, MEMORY_TOKENS, REPO  # noqa: E402

sys.path.insert(0, REPO)


def _args(model_config: str, device: str, dtype: str):
    import train_step

    return train_step.parse_args(["--stage", "pretrain", "--model-config", model_config, "--device", device,
                                  "--dtype", dtype, "--seq", "64"])


def check_losses(model_config: str, device: str, dtype: str) -> dict:
    import torch

    from trainstep.engines import build_project_model
    from trainstep.reference import ReferenceBaseline
    from trainstep.synthetic import compression_batches

    a = _args(model_config, device, dtype)
    vocab = ARCHS[model_config][1]["vocab_size"]
    batch = {k: v.to(device) for k, v in compression_batches(1, 4, a.seq, vocab)[0].items()}
    out = {}
    project = build_project_model(a, "pretrain").eval()
    base = ReferenceBaseline(a, "pretrain")
    base.train(False)
    with torch.no_grad():
        base.encoder.get_base_model().get_input_embeddings().weight[-MEMORY_TOKENS:] = project.memory.weight
        ours = {n: p for n, p in project.model.named_parameters() if "lora_" in n}
        theirs = {n: p for n, p in base.encoder.named_parameters() if "lora_" in n}
        g = torch.Generator().manual_seed(1)
        for name, p in ours.items():  # LoRA B starts at zero: make the adapter matter
            p.copy_((torch.randn(p.shape, generator=g) * 0.02).to(p.device, p.dtype))
            theirs[name].copy_(p)
        for objective in ("kl", "nll", "rc"):
            mine, ref = float(project(objective, **batch)), float(base.compression_loss(batch, objective))
            out[objective] = {"project": mine, "reference": ref, "relative_difference": abs(mine - ref) / max(abs(ref), 1e-6)}
    del project, base
    tolerance = 2e-2 if dtype == "bfloat16" else 1e-4
    return {"passed": all(v["relative_difference"] < tolerance for v in out.values()), "tolerance": tolerance, **out}


def _backends(device: str):
    from torch.nn.attention import SDPBackend

    if device != "cuda":
        return {"math": [SDPBackend.MATH]}
    return {"math": [SDPBackend.MATH], "efficient": [SDPBackend.EFFICIENT_ATTENTION],
            "flash": [SDPBackend.FLASH_ATTENTION], "cudnn": [SDPBackend.CUDNN_ATTENTION]}


def check_bidirectionality(model_config: str, device: str, dtype: str) -> dict:
    import torch
    from torch.nn.attention import sdpa_kernel

    from trainer.modeling.attention import run_decoder
    from trainer.modeling.probe import check_bidirectional
    from trainstep.engines import build_project_model

    a = _args(model_config, device, dtype)
    a.attention = "sdpa"
    model = build_project_model(a, "encode").eval()
    g = torch.Generator().manual_seed(3)
    vocab = ARCHS[model_config][1]["vocab_size"]
    text = torch.randint(10, vocab, (1, 12), generator=g).to(device)
    padded = torch.cat([text, torch.randint(10, vocab, (1, 5), generator=g).to(device)], 1)
    out = {}
    for name, backends in _backends(device).items():
        try:
            with sdpa_kernel(backends), torch.no_grad():
                probe = check_bidirectional(model, model.decoder, vocab, model.switch)
                alone = run_decoder(model.decoder, bidirectional=True, input_ids=text)
                mask = torch.ones_like(padded)
                mask[:, 12:] = 0
                both = torch.cat([padded, padded])
                both_mask = torch.cat([mask, torch.ones_like(mask)])
                with_pad = run_decoder(model.decoder, bidirectional=True, input_ids=both, attention_mask=both_mask)
            diff = float((with_pad[0, :12].float() - alone[0].float()).abs().max() / alone.float().abs().max())
            out[name] = {**probe, "padded_vs_alone": diff, "passed": diff < (2e-2 if dtype == "bfloat16" else 1e-5)}
        except Exception as e:  # a backend that cannot run this shape or dtype here
            out[name] = {"unavailable": f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"}
    ran = [v for v in out.values() if "passed" in v]
    return {"passed": bool(ran) and all(v["passed"] for v in ran), **out}


def check_packing(model_config: str, device: str, dtype: str) -> dict:
    import torch

    from trainer.modeling.attention import run_decoder
    from trainstep.engines import build_project_model

    a = _args(model_config, device, dtype)
    model = build_project_model(a, "encode").eval()
    vocab = ARCHS[model_config][1]["vocab_size"]
    g = torch.Generator().manual_seed(5)
    lengths = [7, 30, 3, 18, 12]
    seqs = [torch.randint(10, vocab, (n,), generator=g).to(device) for n in lengths]
    ids = torch.zeros(len(seqs), max(lengths), dtype=torch.long, device=device)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = s
    mask = (torch.arange(ids.shape[1], device=device)[None] < torch.tensor(lengths, device=device)[:, None]).long()
    out = {}
    with torch.no_grad():
        for bidirectional in (True, False):
            packed = run_decoder(model.decoder, bidirectional=bidirectional, input_ids=ids, attention_mask=mask, packing=64)
            worst = 0.0
            for i, s in enumerate(seqs):
                alone = run_decoder(model.decoder, bidirectional=bidirectional, input_ids=s[None])[0].float()
                worst = max(worst, float((packed[i, : len(s)].float() - alone).abs().max() / alone.abs().max()))
            out["bidirectional" if bidirectional else "causal"] = worst
    tolerance = 2e-2 if dtype == "bfloat16" else 1e-5
    return {"passed": all(v < tolerance for v in out.values()), "tolerance": tolerance,
            "attention": model.config._attn_implementation, **out}


def check_dropout_kernels(device: str) -> dict:
    import torch
    from torch.profiler import ProfilerActivity, profile

    from trainer.modeling import row_dropout

    seeds = torch.arange(64, device=device, dtype=torch.int64) * 7919 + 11
    shape = (38, 1536)
    eager = lambda: row_dropout.row_keep(seeds, 3, shape, 0.1, device)
    compiled_fn = torch.compile(row_dropout.keep_from, dynamic=device == "cuda")
    coords = [row_dropout._arange(38, 1, 3, device), row_dropout._arange(1536, 2, 3, device)]
    compiled = lambda: compiled_fn(seeds.view(-1, 1, 1), coords, 3, 0.1)
    same = bool(torch.equal(eager(), compiled()))
    activities = [ProfilerActivity.CUDA] if device == "cuda" else [ProfilerActivity.CPU]
    counts = {}
    for name, fn in (("eager", eager), ("compiled", compiled)):
        fn()
        with profile(activities=activities) as prof:
            fn()
            if device == "cuda":
                torch.cuda.synchronize()
        events = [e for e in prof.events() if (e.device_type.name == "CUDA") == (device == "cuda")]
        counts[name] = len([e for e in events if device == "cuda" or e.name.startswith("aten::")])
    return {"passed": same, "bit_identical": same, "kernels" if device == "cuda" else "aten_ops": counts}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--model-config", default="qwen2-1.5b", choices=list(ARCHS))
    p.add_argument("--smoke", action="store_true", help="CPU, tiny architecture, fp32")
    a = p.parse_args()
    import torch

    device = "cpu" if a.smoke or not torch.cuda.is_available() else "cuda"
    config = "tiny" if a.smoke else a.model_config
    dtype = "float32" if device == "cpu" else "bfloat16"
    torch.manual_seed(0)
    results = {}
    for name, fn in (("losses", lambda: check_losses(config, device, dtype)),
                     ("bidirectionality", lambda: check_bidirectionality(config, device, dtype)),
                     ("packing", lambda: check_packing(config, device, dtype)),
                     ("dropout_kernels", lambda: check_dropout_kernels(device))):
        results[name] = fn()
        print(f"{name}: {'passed' if results[name]['passed'] else 'FAILED'} "
              f"{json.dumps({k: v for k, v in results[name].items() if k != 'passed'})}", flush=True)
        if device == "cuda":
            torch.cuda.empty_cache()
    from _env import env_info

    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "gpu_checks.json"), "w") as fh:
        json.dump({**env_info(device), "model_config": config, "dtype": dtype, "checks": results}, fh, indent=2)
    return 0 if all(r["passed"] for r in results.values()) else 1


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
