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
``--smoke`` runs the same code on the CPU with the tiny architecture (it is part of ``make test``). The
project's model and the reference are each built once for all checks. Every check runs on its own: one
that raises is recorded as failed (with the error) and the others still run; DIR/gpu_checks.json is
rewritten after each check, so a run stopped at a time limit keeps what it checked. One line per check;
exit 1 if a check fails.
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
                                  "--dtype", dtype, "--seq", "64", "--attention", "sdpa"])


def check_losses(project, base, a) -> dict:
    """The project's losses against the reference approach's with the same weights (memory rows and LoRA
    copied over; LoRA B made non-zero so the adapter matters)."""
    import torch

    from trainstep.synthetic import compression_batches

    vocab = ARCHS[a.model_config][1]["vocab_size"]
    batch = {k: v.to(a.device) for k, v in compression_batches(1, 4, a.seq, vocab)[0].items()}
    out = {}
    project.eval()
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
    tolerance = 2e-2 if a.dtype == "bfloat16" else 1e-4
    return {"passed": all(v["relative_difference"] < tolerance for v in out.values()), "tolerance": tolerance, **out}


def _backends(device: str):
    from torch.nn.attention import SDPBackend

    if device != "cuda":
        return {"math": [SDPBackend.MATH]}
    return {"math": [SDPBackend.MATH], "efficient": [SDPBackend.EFFICIENT_ATTENTION],
            "flash": [SDPBackend.FLASH_ATTENTION], "cudnn": [SDPBackend.CUDNN_ATTENTION]}


def check_bidirectionality(model, a) -> dict:
    """Per SDPA backend: the self-check (encoder call bidirectional, causal call causal) and a padded row
    against the row alone. A backend that cannot run this shape or dtype here is 'unavailable'; a model
    that is not bidirectional under a backend is a failure, with the check's own message."""
    import torch
    from torch.nn.attention import sdpa_kernel

    from trainer.modeling.attention import run_decoder
    from trainer.modeling.probe import NotBidirectional, check_bidirectional

    device = a.device
    model.eval()
    g = torch.Generator().manual_seed(3)
    vocab = ARCHS[a.model_config][1]["vocab_size"]
    text = torch.randint(10, vocab, (1, 12), generator=g).to(device)
    padded = torch.cat([text, torch.randint(10, vocab, (1, 5), generator=g).to(device)], 1)
    out = {"attention": model.config._attn_implementation}
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
            out[name] = {**probe, "padded_vs_alone": diff, "passed": diff < (2e-2 if a.dtype == "bfloat16" else 1e-5)}
        except NotBidirectional as e:  # the kernel ran: attention is wrong under it, which is a failure
            out[name] = {"passed": False, "not_bidirectional": str(e)}
        except RuntimeError as e:  # "No available kernel" and the like: this backend cannot run this call here
            out[name] = {"unavailable": f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"}
    ran = [v for k, v in out.items() if isinstance(v, dict) and "passed" in v]
    return {"passed": bool(ran) and all(v["passed"] for v in ran), **out}


def check_packing(model, a) -> dict:
    import torch

    from trainer.modeling.attention import run_decoder

    device, dtype = a.device, a.dtype
    model.eval()
    vocab = ARCHS[a.model_config][1]["vocab_size"]
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
    import gc

    import torch

    from _env import env_info
    from trainstep.engines import build_project_model
    from trainstep.reference import ReferenceBaseline

    device = "cpu" if a.smoke or not torch.cuda.is_available() else "cuda"
    config = "tiny" if a.smoke else a.model_config
    dtype = "float32" if device == "cpu" else "bfloat16"
    args = _args(config, device, dtype)
    torch.manual_seed(0)
    os.makedirs(a.out, exist_ok=True)
    path, results = os.path.join(a.out, "gpu_checks.json"), {}

    def write():
        with open(path + ".tmp", "w") as fh:
            json.dump({**env_info(device), "model_config": config, "dtype": dtype, "checks": results}, fh, indent=2)
        os.replace(path + ".tmp", path)

    def run(name, fn):
        try:
            results[name] = fn()
        except Exception as e:  # recorded, and the next check still runs
            results[name] = {"passed": False, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"}
        print(f"{name}: {'passed' if results[name]['passed'] else 'FAILED'} "
              f"{json.dumps({k: v for k, v in results[name].items() if k != 'passed'})}", flush=True)
        write()

    project = base = None
    try:
        project = build_project_model(args, "pretrain")  # once, for every check that needs a model
    except Exception as e:
        results["build"] = {"passed": False, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"}
        write()
    if project is not None:
        def losses():
            nonlocal base
            base = ReferenceBaseline(args, "pretrain")
            try:
                return check_losses(project, base, args)
            finally:
                base = None  # the reference's two copies go before the next check
                gc.collect()
                if device == "cuda":
                    torch.cuda.empty_cache()

        run("losses", losses)
        run("bidirectionality", lambda: check_bidirectionality(project, args))
        run("packing", lambda: check_packing(project, args))
    run("dropout_kernels", lambda: check_dropout_kernels(device))
    write()
    return 0 if all(r["passed"] for r in results.values()) else 1


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
