"""Does ``train.compile`` leave the results equal? Two real trainer runs of each stage, eager and compiled, on
the same data, seed and recipe, compared where issue 42 asks: the first logged losses, the held-out stage-1
diagnostics, and the embeddings of the final weights (each run's export, encoded eagerly, and the eager
run's export encoded with ``encode --compile``). Also each run's trainer-measured tokens/s.

    .venv/bin/python bench/compile_equality.py [--steps 20] [--out runs/compile-equality] [--json FILE]

Stage 1 is the SmolLM2-135M kl recipe (4 windows of <= 256 tokens an update, held-out diagnostics every 10
steps on 16 windows); stage 2 the ucl recipe (16 sentences x 2 views, gradient caching in chunks of 16,
gradient checkpointing, attention dropout 0.2), from the plain base (``init_from=null``) so that the two
stages compare independently. ``model.dtype``/``train.precision`` auto: fp32 on a CPU without native bf16.
Every command is printed; finished runs are reused when the script runs again.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "launch"))
sys.path.insert(0, os.path.join(ROOT, "bench"))

from _env import env_info  # noqa: E402
from reproduce_smollm2 import Runner, head  # noqa: E402

RECIPES = os.path.join(ROOT, "launch", "recipes")
STAGES = {"pretrain": ("smollm2-135m-pretrain.yaml", "compression"), "ucl": ("smollm2-135m-ucl.yaml", "sentences")}


def prepare(run: Runner, data: str, out: str, model: str) -> dict:
    paths = {}
    for kind, src, n, args in [
        ("compression", f"{data}/corpus/wiki_paragraphs.train.jsonl.gz", 400, ["--max-tokens", "256"]),
        ("valid", f"{data}/corpus/wiki_paragraphs.valid.jsonl.gz", 40, ["--max-tokens", "256"]),
        ("sentences", f"{data}/corpus/wiki_sentences.txt.gz", 800, ["--max-tokens", "64"]),
    ]:
        paths[kind] = f"{out}/data/{kind}"
        if os.path.exists(f"{paths[kind]}/manifest.json"):
            continue
        os.makedirs(f"{out}/samples", exist_ok=True)
        sample = f"{out}/samples/{kind}" + (".txt" if kind == "sentences" else ".jsonl")
        head(src, sample, n)
        run("prep", "sentences" if kind == "sentences" else "compression", "--input", sample, "--tokenizer", model,
            "--output", paths[kind], "--no-progress", "--overwrite", *args)
    texts = f"{out}/samples/texts.txt"  # STS-B dev sentences: what the embeddings are compared on
    with open(f"{data}/sts/stsbenchmark/sts-dev.csv", encoding="utf-8") as fh:
        rows = [line.rstrip("\n").split("\t") for line in fh][:64]
    with open(texts, "w", encoding="utf-8") as fh:
        fh.write("\n".join(r[5] for r in rows) + "\n")
    paths["texts"] = texts
    return paths


def train(run: Runner, stage: str, mode: str, paths: dict, steps: int, out: str) -> dict:
    recipe, data = STAGES[stage]
    name = f"{out}/runs/{stage}-{mode}"
    args = [f"--config={RECIPES}/{recipe}", f"data={paths[data]}", f"output_dir={name}", f"max_steps={steps}",
            "train.log_every=1", "train.progress=false", "model.dtype=auto", "train.precision=auto",
            f"train.compile={'true' if mode == 'compiled' else 'false'}", f"train.save_every={steps}"]
    if stage == "pretrain":
        args += [f"eval.path={paths['valid']}", "eval.windows=16", "train.eval_every=10"]
    else:
        args += ["init_from=null"]
    if not os.path.exists(f"{name}/final/lineage.json"):
        t = time.monotonic()
        run("pretrain" if stage == "pretrain" else "contrast", *args, train=True)
        with open(f"{name}/wall_s", "w") as fh:
            fh.write(f"{time.monotonic() - t:.1f}\n")
    rows = [json.loads(line) for line in open(f"{name}/metrics.jsonl")]
    effective = json.load(open(f"{name}/effective_settings.json"))
    export = f"{out}/export/{stage}-{mode}"
    if not os.path.exists(f"{export}/modules.json"):
        run("export", "--run", name, "--output", export)
    return {"run": name, "export": export, "wall_s": float(open(f"{name}/wall_s").read()),
            "compiled_blocks": effective.get("compiled_blocks"),
            "losses": [m["loss"] for m in rows if not m.get("eval")][:steps],
            "tokens_per_s": [m.get("tokens_per_s") for m in rows if not m.get("eval")][:steps],
            "diagnostics": [{k: v for k, v in m.items() if k not in ("eval", "time")} for m in rows if m.get("eval")]}


def embeddings(run: Runner, export: str, texts: str, out: str, compiled: bool = False) -> np.ndarray:
    path = f"{out}/embeddings/{os.path.basename(export)}{'-compiled' if compiled else ''}.npy"
    if not os.path.exists(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        run("encode", "--model", export, "--input", texts, "--output", path, *(["--compile"] if compiled else []))
    return np.load(path)


def agreement(a: np.ndarray, b: np.ndarray) -> dict:
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    return {"min_cosine": float(cos.min()), "max_abs_diff_over_max_abs": float(np.abs(a - b).max() / np.abs(b).max())}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default=os.path.join(ROOT, "..", "shared", "data"))
    p.add_argument("--out", default=os.path.join(ROOT, "runs", "compile-equality"))
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--stages", nargs="+", default=list(STAGES), choices=list(STAGES))
    p.add_argument("--json", default=os.path.join(ROOT, "bench", "out", "compile_equality.json"))
    a = p.parse_args()
    os.makedirs(a.out, exist_ok=True)
    run = Runner(a.out, 1)
    model = run("models", "pull", "smollm2-135m").strip().splitlines()[-1]
    paths = prepare(run, a.data, a.out, model)
    result = {"env": env_info("cpu"), "steps": a.steps, "stages": {}}
    for stage in a.stages:
        r = {mode: train(run, stage, mode, paths, a.steps, a.out) for mode in ("eager", "compiled")}
        e, c = r["eager"], r["compiled"]
        diffs = [abs(x - y) for x, y in zip(c["losses"], e["losses"])]
        emb_e, emb_c = embeddings(run, e["export"], paths["texts"], a.out), embeddings(run, c["export"], paths["texts"], a.out)
        emb_ec = embeddings(run, e["export"], paths["texts"], a.out, compiled=True)
        median = lambda xs: float(np.median([x for x in xs if x]))  # noqa: E731
        result["stages"][stage] = {
            "runs": r, "loss_max_abs_diff": max(diffs), "loss_max_rel_diff": max(d / abs(y) for d, y in zip(diffs, e["losses"])),
            "embeddings_compiled_run_vs_eager_run": agreement(emb_c, emb_e),
            "embeddings_compiled_encode_vs_eager_encode": agreement(emb_ec, emb_e),
            "tokens_per_s_median": {"eager": median(e["tokens_per_s"]), "compiled": median(c["tokens_per_s"])},
        }
        s = result["stages"][stage]
        print(f"{stage}: losses max |diff| {s['loss_max_abs_diff']:.2e} (rel {s['loss_max_rel_diff']:.2e}) over "
              f"{len(diffs)} steps; embeddings min cos {s['embeddings_compiled_run_vs_eager_run']['min_cosine']:.6f} "
              f"(compiled encode {s['embeddings_compiled_encode_vs_eager_encode']['min_cosine']:.6f}); tokens/s "
              f"eager {s['tokens_per_s_median']['eager']:.0f}, compiled {s['tokens_per_s_median']['compiled']:.0f}; "
              f"compiled blocks {c['compiled_blocks']}", flush=True)
        os.makedirs(os.path.dirname(a.json), exist_ok=True)
        with open(a.json, "w") as fh:
            json.dump(result, fh, indent=1)
    print(f"wrote {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
