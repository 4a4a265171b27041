"""One-device training-step throughput (tokens/s, samples/s, step time, peak memory, MFU) of each stage.

Model: random weights from the architecture's config (no hub access, ``ARCHS`` below), built by the project's
``load_causal_lm(random_init=True)`` and ``build_compressor`` (K=8 memory tokens, LoRA r=16, alpha=32,
dropout 0.05 on q,v,o,gate,up,down, as in the recipes).

Stages (``--stage``):

* ``pretrain``: the project's path, literally: ``PretrainTask.loss`` / ``PretrainTask.update`` (Compressor
  forward -> ``compression_loss`` with ``--objective`` kl|nll|rc -> backward -> optimizer step).
* ``ucl`` / ``scl``: ``ContrastTask.loss`` / ``ContrastTask.update``: gradient caching in ``--chunk`` rows
  (``trainer/engine/gradcache.py``), row-seeded dropout, InfoNCE; attention dropout 0.2 for ucl, 0 for scl.
* ``encode``: the encoder forward without grad (``Compressor.embed_texts``), texts/s over a length mix,
  length-sorted batches (longest first, as ``trainer/serving/encoder.py:Encoder.encode`` does) against the same texts
  in arbitrary order, each batch padded to its longest text.

``--variants`` runs several configurations of the project's path on one model, built once (chunk size,
chunk grouping, gradient checkpointing, micro-batch, the DeepSpeed engine): each a row, written to the JSON
as soon as it is measured (bench/session.py runs the GPU session's parts this way).

The stage methods talk to a DeepSpeed-like engine; here ``PlainEngine`` is that engine on plain torch (AdamW
over the trainable parameters, clipping at 2.0, one optimizer step per batch however many micro-steps
gradient caching makes of it). ``--deepspeed`` runs the real DeepSpeed engine (ZeRO-2, one rank) instead
when deepspeed is installed. Weights are in ``--dtype`` (bf16 on CUDA, as ``model.dtype: bfloat16``;
fp32 on CPU); LoRA weights are fp32 (peft's default) and the plain path keeps no fp32 master copy.

``--baseline``: THE REFERENCE CODE'S APPROACH, REIMPLEMENTED HERE for comparison (it is not the project's
path; our reading of DESIGN.md §1 "deliberate differences"): two full model copies -- a trainable encoder
copy with LoRA whose vocabulary is resized by K memory tokens (the whole input-embedding matrix trains,
so the new rows can learn) and a separate frozen decoder/teacher copy --, eager attention, every sequence
right-padded to ``--seq`` (memory tokens right after the text), full [batch x length x vocab] logits from
the HF heads and the loss in a per-sample Python loop over fp32 full-vocabulary softmaxes. Contrastive
stages: the encoder copy only, all rows padded to ``--seq`` in one pass with a graph (no caching).
Encode: the encoder copy, eager, padded to ``--seq``, arbitrary order. With ``--baseline`` both run in
this process on the same batches, baseline first (then freed), and the ratios are printed.

Timing: ``--warmup`` steps, then ``--steps`` timed steps, each on its own synthetic batch (fixed seed,
identical for every mode). CUDA: ``torch.cuda.Event`` around each step, synchronised; CPU: perf_counter,
one torch thread unless ``--threads`` says otherwise (steadier on a shared machine).
Rates (tokens/s, samples/s, TFLOP/s, MFU) are medians of the per-step rates; step time is reported as
median, p10 and p90. tokens = real (non-pad) tokens of the texts processed: context + continuation
(pretrain), every encoded row (ucl counts both views, as the trainer's tokens_per_s does), texts (encode).
Peak memory: CUDA ``max_memory_allocated`` after ``reset_peak_memory_stats`` before the model is built
(weights, optimizer state and activations); CPU: peak RSS delta over the same span (``ru_maxrss`` when it
rose, else a 5 ms psutil sampler), which is rough and labelled as such.

MFU = model FLOPs per step / step time / measured peak, where the peak is the best of several square
matmuls in ``--dtype`` on the same device in the same run (8192^3 on CUDA, 1024^3 on CPU; 2 n^3 FLOPs).
Model FLOPs are the useful matmul FLOPs of the batch's real tokens (see ``stack_flops`` and
``compression_flops``); padding, recomputation and the first no-grad pass of gradient caching are not
useful work and are not counted, so baseline and optimized have the same FLOPs for the same batch.

Run from the repository root:

    .venv/bin/python bench/train_step.py --stage pretrain --model-config tiny --device cpu --baseline
    .venv/bin/python bench/train_step.py --stage scl --model-config llama2-7b --micro-batch 64 --chunk 32
    .venv/bin/python bench/train_step.py --stage encode --model-config qwen2-1.5b --micro-batch 64

It prints a markdown table and writes ``bench/out/train_step-<stage>-<config>.json`` (``--json``).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import sys
import warnings
from typing import Optional

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # bench/: its trainstep package and _env

from trainstep.archs import (ARCHS, DEFAULT_ATTENTION_DROPOUT, DEFAULT_CHUNK, DEFAULT_MICRO_BATCH,  # noqa: E402
                             DEFAULT_STEPS, MEMORY_TOKENS, REPO, SEED, Dims, dims_of)
from trainstep.engines import PlainEngine, build_base, build_project_model, project_step  # noqa: E402,F401
from trainstep.flops import (attention_pairs, batch_flops, compression_flops, contrast_flops,  # noqa: E402,F401
                             encode_flops, head_flops, linear_params_per_layer, stack_flops)
from trainstep.measure import MemoryMeter, _free, _is_oom, matmul_peak, summarize, timed  # noqa: E402
from trainstep.reference import ReferenceBaseline, baseline_step  # noqa: E402
from trainstep.report import print_table, ratios  # noqa: E402
from trainstep.synthetic import (batch_tokens, compression_batches, contrast_batches,  # noqa: E402,F401
                                 encode_texts, sentence_lengths)


MODE_LABELS = {"project": "optimized (project)", "baseline": "baseline (reference, reimplemented)"}
# What a --variants entry may change, and how each value is read.
VARIANT_KEYS = {"chunk": int, "chunk_by_length": lambda v: v.lower() in ("1", "true", "yes"),
                "gradient_checkpointing": lambda v: v.lower() in ("1", "true", "yes"),
                "deepspeed": lambda v: v.lower() in ("1", "true", "yes"), "micro_batch": int,
                "compile": lambda v: v.lower() in ("1", "true", "yes")}


def parse_variant(spec: str) -> dict:
    """``chunk=16,chunk_by_length=0`` -> {"chunk": 16, "chunk_by_length": False}; ``-``: no change."""
    out = {}
    for item in filter(None, spec.split(",")):
        key, sep, value = item.partition("=")
        if item == "-":
            continue
        if not sep or key not in VARIANT_KEYS:
            raise SystemExit(f"--variants {spec!r}: expected KEY=VALUE[,KEY=VALUE] with KEY in {', '.join(VARIANT_KEYS)}")
        out[key] = VARIANT_KEYS[key](value)
    return out


def make_batches(a) -> list[dict]:
    n = a.warmup + a.steps
    batches = (compression_batches(n, a.micro_batch, a.seq, a.vocab) if a.stage == "pretrain"
               else contrast_batches(a.stage, n, a.micro_batch, a.seq, a.vocab, a.negatives))
    return [{k: v.to(a.device) for k, v in b.items()} for b in batches]


def set_checkpointing(model, on: bool) -> None:
    """Switch gradient checkpointing of the project's model (built once) on or off between variants."""
    from trainer.modeling.adapters import enable_gradient_checkpointing

    if on:
        enable_gradient_checkpointing(model.model, model.switch)
    else:
        model.model.gradient_checkpointing_disable()


def set_compiled(model, on: bool) -> bool:
    """Blocks compiled (``train.compile``) or eager between variants; True when this call compiled them (the
    variant's warm-up then pays the compilation, which is timed apart). Eager again: the compiled wrapper
    is dropped, the graphs stay cached for a later compiled variant."""
    from trainer.modeling.compile import compile_blocks, compiled_blocks, decoder_blocks, uncompile_blocks

    blocks = decoder_blocks(model.decoder)
    if not on:
        uncompile_blocks(model.decoder)
        return False
    if compiled_blocks(model.decoder) == len(blocks):
        return False
    compile_blocks(model.decoder)
    return True


def profiled(a, fn):
    """``fn`` under the torch profiler (``--profile N``): returns (result, the N ops of most self time)."""
    if not a.profile:
        return fn(), None
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if a.device.startswith("cuda") else [])
    with profile(activities=acts) as prof:
        out = fn()
    key = "self_cuda_time_total" if a.device.startswith("cuda") else "self_cpu_time_total"
    events = sorted(prof.key_averages(), key=lambda e: getattr(e, key), reverse=True)
    total = sum(getattr(e, key) for e in events) or 1
    top = [{"op": e.key, "self_ms": getattr(e, key) / 1e3, "share": getattr(e, key) / total, "calls": e.count}
           for e in events[:a.profile]]
    return out, top


def run_training(a, mode: str, d: Dims, peak: dict, emit=lambda row: None) -> list[dict]:
    """Build ``mode``'s model once, then for each variant (``--variants``; project mode) run warm-up +
    timed steps on its batches; one result row a variant, handed to ``emit`` as soon as it is measured.
    Warm-up steps run before the first variant only (kernels chosen, allocator grown): later variants
    reuse the warm model. DeepSpeed variants must come last: its engine keeps hooks on the parameters."""
    import copy

    prefix = len(ARCHS[a.model_config][2])
    specs = a.variants if mode == "project" and a.variants else ["-"]
    meter, model, rows = MemoryMeter(a.device), None, []
    try:
        model = ReferenceBaseline(a, a.stage) if mode == "baseline" else build_project_model(a, a.stage)
        for n, spec in enumerate(specs):
            v = copy.copy(a)
            for key, value in parse_variant(spec).items():
                setattr(v, key, value)
            name = mode if spec == "-" else f"{mode}:{spec}"
            row = {"stage": a.stage, "mode": name, "label": MODE_LABELS[mode] + ("" if spec == "-" else f", {spec}"),
                   "micro_batch": v.micro_batch, "seq": v.seq, "chunk": v.chunk if a.stage in ("ucl", "scl") else None,
                   "gradient_checkpointing": v.gradient_checkpointing, "engine": "deepspeed" if v.deepspeed else "plain",
                   "compile": bool(v.compile) and mode == "project"}
            times, losses, warmup_losses, warmup_s, step = [], [], [], [], None
            batches = make_batches(v)  # the same timed batches for every variant of one micro-batch size
            meter.reset()
            try:
                if mode == "baseline":
                    step, _ = baseline_step(v, v.stage, model)
                else:
                    set_checkpointing(model, v.gradient_checkpointing)
                    fresh = set_compiled(model, v.compile)
                    step, _ = project_step(v, v.stage, model)
                    if n > 0 and not fresh:  # a warm model: no warm-up (a first compilation needs one)
                        batches, v.warmup = batches[v.warmup:], 0
                if mode == "baseline" and n > 0:
                    batches, v.warmup = batches[v.warmup:], 0
                if v.compile and mode == "project":
                    from trainer.modeling.compile import compile_stats

                    before = compile_stats()
                for i, batch in enumerate(batches):
                    if i < v.warmup:
                        loss, secs = timed(lambda: step(batch), v.device)
                        warmup_losses.append(loss)
                        warmup_s.append(secs)
                        continue
                    if i == v.warmup and v.compile and mode == "project":
                        row["compiled_in_warmup"] = {k: compile_stats()[k] - before[k] for k in before}
                    (loss, secs), top = profiled(v, lambda: timed(lambda: step(batch), v.device)) \
                        if i == len(batches) - 1 else (timed(lambda: step(batch), v.device), None)
                    times.append(secs)
                    losses.append(loss)
                    if top:
                        row["profile_last_step"] = top
                if v.compile and mode == "project":  # recompilations during the timed steps (should be none)
                    row["compiled_total"] = {k: compile_stats()[k] - before[k] for k in before}
                row["status"] = "ok"
            except Exception as e:  # out of memory is a result (the variant does not fit); an error is recorded
                if not _is_oom(e):  # and the next variant still runs (the exit status says one failed)
                    import traceback

                    traceback.print_exc()
                row["status"] = "out of memory" if _is_oom(e) else f"error: {type(e).__name__}: {str(e)[:300]}"
            finally:
                row["peak_mib"], row["peak_measured_by"] = meter.peak()
                del step
                _free(v.device)
            timed_batches = batches[v.warmup:]
            tokens = [batch_tokens(v.stage, b) for b in timed_batches]
            flops = [batch_flops(v.stage, b, d, prefix, v.objective) for b in timed_batches]
            row.update(per_step={"seconds": times, "tokens": tokens, "flops": flops, "loss": losses},
                       warmup_losses=warmup_losses, warmup_seconds=warmup_s)
            if a.stage in ("ucl", "scl"):
                row["padded_tokens_per_step"] = [padded_tokens(v, b) for b in timed_batches]
            if row["status"] == "ok":
                row.update(summarize(times, tokens, [v.micro_batch] * len(times), flops, peak["tflops"]))
                row["nonfinite_losses"] = sum(not math.isfinite(x) for x in losses)
            rows.append(row)
            emit(row)
    finally:
        meter.close()
        del model
        _free(a.device)
    return rows


def padded_tokens(v, batch: dict) -> int:
    """Token positions the encoder computes for one contrastive batch (both passes of gradient caching
    count once), padding included: what grouping chunks by length saves."""
    from trainer.stages.contrast import ContrastRecipe, ContrastSettings, ContrastTask
    from trainer.engine.dist import World
    from trainer.engine.settings import TrainSettings

    task = ContrastTask(ContrastRecipe(contrast=ContrastSettings(kind=v.stage, chunk=v.chunk, negatives=v.negatives),
                                       train=TrainSettings(micro_batch=v.micro_batch)))
    task.world, task.pad_id = World(0, 1, 0), 0
    rows, _ = task.rows({k: t.cpu() for k, t in batch.items()}, 0, 0)
    extra = MEMORY_TOKENS + len(ARCHS[v.model_config][2])  # the prefix and memory positions of every row
    return rows.padded_tokens(v.chunk, v.chunk_by_length and len(rows) > v.chunk) + len(rows) * extra


def encode_pass(embed, texts: list[list[int]], order, batch_size: int, device: str, limit: Optional[int] = None):
    """Encode ``texts`` in ``order``, ``batch_size`` at a time, each batch padded to its longest text."""
    import torch

    from trainer.data.padding import pad_right

    starts = range(0, len(order), batch_size)
    with torch.no_grad():
        for start in list(starts)[:limit]:
            ids, lengths = pad_right([texts[i] for i in order[start:start + batch_size]], 0)
            embed(ids.to(device), lengths.to(device))


def run_encode(a, mode: str, texts: list[list[int]], d: Dims, peak: dict) -> list[dict]:
    """Texts/s of the encoder forward; the project's model in sorted and arbitrary order, the baseline
    (padded to ``seq`` by construction) in arbitrary order."""
    import numpy as np

    prefix = len(ARCHS[a.model_config][2])
    lengths = [len(t) for t in texts]
    orders = {"arbitrary": np.arange(len(texts))}
    if mode == "project":  # longest first, as Encoder.encode orders them; packed: the same, without padding
        orders = {"sorted": np.argsort([-n for n in lengths], kind="stable"), **orders}
        if a.packing:
            orders = {"sorted, packed": orders["sorted"], **orders}
        if a.compile:  # last: the blocks stay compiled once compiled
            orders["sorted, compiled"] = orders["sorted"]
    n_batches = math.ceil(len(texts) / a.micro_batch)
    flops = encode_flops(d, lengths, MEMORY_TOKENS, prefix)
    meter = MemoryMeter(a.device)
    model = ReferenceBaseline(a, "encode") if mode == "baseline" else build_project_model(a, "encode")
    rows = []
    try:
        for name, order in orders.items():
            if mode == "project":
                model.packing = a.packing if "packed" in name else None
                set_compiled(model, "compiled" in name)
            meter.reset()
            warm = timed(lambda: encode_pass(model.embed_texts, texts, order, a.micro_batch, a.device,
                                             limit=max(1, a.warmup)), a.device)[1]
            times = [timed(lambda: encode_pass(model.embed_texts, texts, order, a.micro_batch, a.device), a.device)[1]
                     for _ in range(a.repeats)]
            row = {"stage": "encode", "mode": f"{mode}-{name}", "status": "ok", "micro_batch": a.micro_batch,
                   "seq": a.seq, "label": f"{MODE_LABELS[mode]}, {name} order", "texts": len(texts),
                   "batches": n_batches, "per_pass": {"seconds": times}, "warmup_s": warm}
            row.update(summarize(times, [sum(lengths)] * len(times), [len(texts)] * len(times), [flops] * len(times),
                                 peak["tflops"], per=n_batches))
            row["texts_per_s"] = row["samples_per_s"]
            row["peak_mib"], row["peak_measured_by"] = meter.peak()
            rows.append(row)
    finally:
        meter.close()
        del model
        _free(a.device)
    return rows


# ---------------------------------------------------------------------------------------------------
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--stage", choices=["pretrain", "ucl", "scl", "encode"], required=True)
    p.add_argument("--model-config", choices=list(ARCHS), required=True)
    p.add_argument("--seq", type=int, help="max tokens per window / text; the baseline pads to it (512; CPU 128)")
    p.add_argument("--micro-batch", type=int, help="samples per step (encode: texts per batch); default per stage")
    p.add_argument("--steps", type=int, help="timed steps (20; CPU 5); encode: texts = steps x micro-batch")
    p.add_argument("--warmup", type=int, help="warm-up steps (3; CPU 1)")
    p.add_argument("--repeats", type=int, default=3, help="encode: timed passes over the texts per order")
    p.add_argument("--baseline", action="store_true", help="also run the reference approach (reimplemented)")
    p.add_argument("--device", help="cuda | cpu (default: cuda if available)")
    p.add_argument("--dtype", choices=["bfloat16", "float32"], help="default: bfloat16 on CUDA, float32 on CPU")
    p.add_argument("--attention", default="sdpa", choices=["auto", "sdpa", "eager", "flash_attention_2"])
    p.add_argument("--objective", default="kl", choices=["kl", "nll", "rc"], help="pretrain objective")
    p.add_argument("--loss-chunk", type=int, default=1024, help="tokens per LM-head chunk (objective.loss_chunk)")
    p.add_argument("--chunk", type=int, help="ucl/scl: rows per gradient-cache chunk (16 ucl, 32 scl; CPU 4)")
    p.add_argument("--negatives", type=int, default=1, help="scl: hard negatives per query")
    p.add_argument("--attention-dropout", type=float, help="ucl/scl (default: 0.2 ucl, 0.0 scl)")
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--compile", action="store_true", help="project mode: torch.compile each decoder block (train.compile)")
    p.add_argument("--profile", type=int, default=0, metavar="N",
                   help="torch-profile each row's last timed step; record its N ops of most self time")
    p.add_argument("--weights", metavar="DIR", help="real weights (a local HF folder or a model-store name such as "
                   "smollm2-135m) instead of random ones; must match --model-config's shape")
    p.add_argument("--packing", type=int, default=0, metavar="TOKENS",
                   help="project mode: pack sequences into rows of this many tokens (data.packing); encode adds a packed row")
    p.add_argument("--chunk-by-length", type=int, default=1, choices=[0, 1],
                   help="ucl/scl: cut gradient-cache chunks from rows sorted by length (contrast.chunk_by_length)")
    p.add_argument("--variants", nargs="+", metavar="K=V[,K=V]",
                   help="project mode: configurations run one after another on one model, built once; keys: "
                        f"{', '.join(VARIANT_KEYS)} ('-': as the other arguments say); deepspeed=1 ones last")
    p.add_argument("--deepspeed", action="store_true", help="optimized mode through the DeepSpeed engine")
    p.add_argument("--ds-config", default="ds_configs/zero2.json")
    p.add_argument("--threads", type=int, help="CPU: torch threads (default 1; 0: torch's default)")
    p.add_argument("--json", help="default: bench/out/train_step-<stage>-<config>.json")
    a = p.parse_args(argv)
    import torch

    a.device = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
    a.dtype = a.dtype or ("bfloat16" if a.device.startswith("cuda") else "float32")
    kind = "cuda" if a.device.startswith("cuda") else "cpu"
    a.micro_batch = a.micro_batch or DEFAULT_MICRO_BATCH[kind][a.stage]
    for key, value in DEFAULT_STEPS[kind].items():
        if getattr(a, key) is None:
            setattr(a, key, value)
    a.chunk = a.chunk or DEFAULT_CHUNK[kind].get(a.stage, 0)
    if a.attention_dropout is None:
        a.attention_dropout = DEFAULT_ATTENTION_DROPOUT.get(a.stage, 0.0)
    if a.seq < 24 or a.steps < 1 or a.warmup < 0 or a.micro_batch < 1 or a.repeats < 1:
        p.error("need --seq >= 24, --steps >= 1, --warmup >= 0, --micro-batch >= 1, --repeats >= 1")
    variants = [parse_variant(v) for v in a.variants or []]
    if any(v.get("deepspeed", a.deepspeed) for v in variants) and importlib.util.find_spec("deepspeed") is None \
            or a.deepspeed and importlib.util.find_spec("deepspeed") is None:
        p.error("--deepspeed: deepspeed is not installed (the default plain-torch engine needs nothing more)")
    uses_ds = [v.get("deepspeed", a.deepspeed) for v in variants]
    if any(uses_ds) and not all(uses_ds[uses_ds.index(True):]):
        p.error("--variants: DeepSpeed variants must come last (its engine keeps hooks on the parameters)")
    a.chunk_by_length = bool(a.chunk_by_length)
    a.vocab = dims_of(a.model_config).vocab
    a.json = a.json or os.path.join(REPO, "bench", "out", f"train_step-{a.stage}-{a.model_config}.json")
    return a


def preload(name: str) -> None:
    """Import what building and running a model imports lazily, so that the first mode's CPU memory
    figure does not carry the libraries' own memory."""
    import importlib

    import peft  # noqa: F401
    import transformers

    import trainer.stages.contrast, trainer.stages.pretrain, trainer.modeling.compressor  # noqa: F401,E401

    model_type = getattr(transformers, ARCHS[name][0])().model_type
    importlib.import_module(f"transformers.models.{model_type}.modeling_{model_type}")


def main(argv=None) -> int:
    a = parse_args(argv)
    sys.path.insert(0, REPO)
    warnings.filterwarnings("ignore", category=FutureWarning)  # transformers deprecations from peft
    from _env import env_info  # noqa: E402  (bench/ is on sys.path when run as a script)

    import torch

    if a.device == "cpu" and a.threads != 0:
        # OpenMP threads wait for each other at every op; on a shared machine one busy core makes each
        # small op wait for a time slice (the tiny model's ucl step: 4.2 s with 2 threads, 28 ms with 1).
        torch.set_num_threads(a.threads or 1)
    torch.manual_seed(SEED)
    info = env_info(a.device)
    peak = matmul_peak(a.device, a.dtype)
    d = dims_of(a.model_config)
    vocab = d.vocab
    preload(a.model_config)
    modes = (["baseline"] if a.baseline else []) + ["project"]  # baseline first, freed before the project's
    rows: list[dict] = []
    header = {**info, "device": a.device, "args": vars(a), "arch": {"name": a.model_config, **ARCHS[a.model_config][1]},
              "memory_tokens": MEMORY_TOKENS, "prefix_tokens": len(ARCHS[a.model_config][2]), "matmul_peak": peak}

    def write(done: bool = False) -> None:
        """The JSON after every measured row: a run stopped at a time limit keeps what it measured."""
        os.makedirs(os.path.dirname(os.path.abspath(a.json)), exist_ok=True)
        tmp = a.json + ".tmp"
        with open(tmp, "w") as f:
            json.dump({**header, "complete": done, "rows": rows, "ratios": ratios(rows)}, f, indent=2)
        os.replace(tmp, a.json)

    def emit(row: dict) -> None:
        rows.append(row)
        write()
        print(f"  ran {row['mode']}: {row['status']}", file=sys.stderr, flush=True)

    if a.stage == "encode":
        texts = encode_texts(a.steps * a.micro_batch, a.seq, vocab)
        for mode in modes:
            for row in run_encode(a, mode, texts, d, peak):
                emit(row)
    else:
        for mode in modes:
            run_training(a, mode, d, peak, emit)
    write(done=True)
    print_table(rows, a, info, peak)
    unit = "texts/s" if a.stage == "encode" else "tokens/s"  # the same texts in every encode mode
    for name, r in ratios(rows).items():
        mem = f", peak memory x{r['peak_memory']:.2f}" if r["peak_memory"] else ""
        print(f"ratio {name.replace('_vs_', ' / ')}: {unit} x{r['tokens_per_s']:.2f}{mem}")
    print(f"wrote {a.json}")
    bad = [r for r in rows if r.get("nonfinite_losses") or r["status"].startswith("error")]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
