"""Stage 1's ablation on the real SmolLM2-135M (docs/RESULTS.md, "Stage 1: does it compress?").

One budget, one recipe (`launch/recipes/smollm2-135m-pretrain.yaml` with the CPU profile below), and one run
per row: every fix on, then each fix undone alone, then all of them undone (the code before the fixes).
After each run: its held-out diagnostics (`recovered`, from metrics.jsonl) and the memory-pooled STS-B dev
of its export. A control row scores untrained memory (the same first token and initialisation, no
training). Each finished row is one small JSON file under `--results` (commit it as it lands); a row
whose file exists is skipped, so an interrupted ablation continues where it stopped.

    python launch/ablate_stage1.py [--data ../shared/data] [--out runs/ablate-stage1] [--rows all,no-first-token]
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from reproduce_smollm2 import ROOT, Runner, head, spread  # noqa: E402  (the reproduction's helpers)

RECIPE = os.path.join(ROOT, "launch", "recipes", "smollm2-135m-pretrain.yaml")
# The CPU budget: 200 updates of 8 windows (1,600 windows of 128-256 tokens, contexts >= 100 tokens), at a
# learning rate for so few updates; the recipe's schedule shape (warm-up from 1e-5, linear decay to 0.1 lr).
PROFILE = ["max_steps=200", "train.micro_batch=8", "optim.lr=5e-4", "optim.warmup_steps=20",
           "optim.warmup_start_lr=1e-5", "eval.windows=48", "train.eval_every=50", "train.save_every=100",
           "train.log_every=10", "train.progress=false", "objective.loss_chunk=1024"]
OLD_SCHEDULE = ["optim.warmup_steps=null", "optim.warmup_ratio=0.1", "optim.warmup_start_lr=0.0",
                "optim.warmup_type=linear", "optim.schedule=cosine", "optim.min_lr_ratio=0.0"]
ROWS = {  # name -> (what differs from the recipe, overrides)
    "all-fixes": ("the recipe: first token <|endoftext|>, sampled slots, warm-up from a floor + linear decay", []),
    "no-first-token": ("no fixed first token (model.first_token=none)", ["model.first_token=none"]),
    "im-start-first-token": ("first token <|im_start|> (the tokenizer's bos_token)", ["model.first_token=<|im_start|>"]),
    "one-point-slots": ("memory slots near one point (model.memory_init=mean)", ["model.memory_init=mean"]),
    "old-schedule": ("warm-up from 0 over 10 %, cosine decay to 0", OLD_SCHEDULE),
    "input-embeddings": ("+ E's trainable input-embedding delta (model.train_input_embeddings)",
                         ["model.train_input_embeddings=true"]),
    "before-fixes": ("every fix undone: no first token, one-point slots, the old schedule",
                     ["model.first_token=none", "model.memory_init=mean", *OLD_SCHEDULE]),
}
CONTROL = "untrained-memory"


def commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def prepare(run: Runner, data: str, out: str, model: str, paragraphs: int, valid: int) -> dict:
    paths = {}
    for name, src, n in (("train", "wiki_paragraphs.train.jsonl.gz", paragraphs),
                         ("valid", "wiki_paragraphs.valid.jsonl.gz", valid)):
        paths[name] = f"{out}/data/{name}"
        if not os.path.exists(f"{paths[name]}/manifest.json"):
            os.makedirs(f"{out}/samples", exist_ok=True)
            sample = f"{out}/samples/{name}.jsonl"
            head(f"{data}/corpus/{src}", sample, n)
            run("prep", "compression", "--input", sample, "--tokenizer", model, "--output", paths[name], "--no-progress",
                "--overwrite", "--max-tokens", "256", "--min-context", "100", "--min-continuation", "28")
    os.makedirs(f"{out}/sts-dev/stsbenchmark", exist_ok=True)
    spread(f"{data}/sts/stsbenchmark/sts-dev.csv", f"{out}/sts-dev/stsbenchmark/sts-dev.csv", 500)
    paths["sts_dev"] = f"{out}/sts-dev"
    return paths


def sts_dev(run: Runner, model: str, paths: dict, name: str, *extra: str) -> float:
    f = f"{run.out}/eval/{name}.dev.json"
    if not os.path.exists(f):
        os.makedirs(os.path.dirname(f), exist_ok=True)
        run("eval", "sts", "--model", model, "--data", paths["sts_dev"], "--stsb-split", "dev", "--output", f,
            "--no-progress", *extra)
    return json.load(open(f))["results"]["STSBenchmark"]["spearman"]


def row(run: Runner, name: str, paths: dict) -> dict:
    what, overrides = ROWS[name]
    out = f"{run.out}/runs/{name}"
    args = ["--config", RECIPE, f"data={paths['train']}", f"eval.path={paths['valid']}", f"output_dir={out}",
            *PROFILE, *overrides]
    t = time.monotonic()
    if not os.path.exists(f"{out}/final/lineage.json"):
        run("pretrain", *args, train=True)
        with open(f"{out}/wall_s", "w") as fh:
            fh.write(f"{time.monotonic() - t:.1f}\n")
    records = [json.loads(line) for line in open(f"{out}/metrics.jsonl")]
    evals = [r for r in records if r.get("eval")]
    steps = [r for r in records if not r.get("eval")]
    export = f"{run.out}/export/{name}"
    if not os.path.exists(f"{export}/modules.json"):
        run("export", "--run", out, "--output", export)
    effective = json.load(open(f"{out}/effective_settings.json"))
    keep = ("kl_memory", "kl_no_memory", "recovered", "nll_memory", "nll_no_memory", "nll_teacher", "nll_recovered",
            "rc_memory", "rc_no_memory")
    return {"row": name, "what": what, "overrides": overrides, "profile": PROFILE,
            "diagnostics": [{"step": e["step"], **{k: e[k] for k in keep}} for e in evals],
            "recovered": evals[-1]["recovered"], "sts_dev_memory": sts_dev(run, export, paths, name),
            "final_loss": steps[-1]["loss"], "steps": steps[-1]["step"],
            "initial_memory": effective["memory_tokens"], "first_token_ids": effective["first_token_ids"],
            "wall_s": float(open(f"{out}/wall_s").read()), "train_s": steps[-1].get("train_s")}


def control(run: Runner, paths: dict, model: str) -> dict:
    """Untrained memory: the base model's memory pooling with the recipe's first token and slots."""
    dev = sts_dev(run, model, paths, CONTROL, "--pooling", "memory", "--first-token", "<|endoftext|>")
    metrics = f"{run.out}/runs/all-fixes/metrics.jsonl"
    first = json.loads(open(metrics).readline()) if os.path.exists(metrics) else {}
    return {"row": CONTROL, "what": "no stage 1: fresh sampled slots, first token <|endoftext|>", "sts_dev_memory": dev,
            "recovered": first.get("recovered") if first.get("eval") else None,
            "note": "recovered: step 0 of the all-fixes run (the same slots, before any update)"}


def table(results: str) -> str:
    """The ablation table (markdown) from the result files, rows in ROWS order, then the control."""
    recs = {}
    for name in [*ROWS, CONTROL]:
        path = os.path.join(results, f"{name}.json")
        if os.path.exists(path):
            recs[name] = json.load(open(path))
    if not recs:
        return "(no result files yet)"
    out = ["| row | what differs | recovered: step 0 → 50 → 100 → 150 → 200 | kl_memory (no memory) | "
           "rc_memory (no memory) | STS-B dev, memory pooling | slots' pairwise cosine at step 0 | wall | commit |",
           "|---|---|---|---:|---:|---:|---:|---:|---|"]
    for name, r in recs.items():
        r = {**r, "what": r["what"].replace("|", "\\|")}  # <|endoftext|> inside a table cell
        if name == CONTROL:
            out.append(f"| {name} | {r['what']} | {r['recovered']:.3f} (step 0) | | | {r['sts_dev_memory']:.2f} | | | "
                       f"{r['commit']} |")
            continue
        curve = " → ".join(f"{d['recovered']:.3f}" for d in r["diagnostics"])
        end = r["diagnostics"][-1]
        out.append(f"| {name} | {r['what']} | {curve} | {end['kl_memory']:.3f} ({end['kl_no_memory']:.3f}) | "
                   f"{end['rc_memory']:.3f} ({end['rc_no_memory']:.3f}) | {r['sts_dev_memory']:.2f} | "
                   f"{r['initial_memory']['pairwise_cosine']:.4f} | {r['wall_s'] / 60:.0f} min | {r['commit']} |")
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=os.path.join(ROOT, "..", "shared", "data"))
    ap.add_argument("--out", default=os.path.join(ROOT, "runs", "ablate-stage1"))
    ap.add_argument("--results", default=os.path.join(ROOT, "docs", "results", "stage1-ablation"))
    ap.add_argument("--rows", default=",".join([*ROWS, CONTROL]))
    ap.add_argument("--paragraphs", type=int, default=20000)
    ap.add_argument("--valid", type=int, default=1000)
    ap.add_argument("--table", action="store_true", help="print the table of the recorded rows and exit")
    args = ap.parse_args()
    if args.table:
        print(table(args.results))
        return 0
    os.makedirs(args.out, exist_ok=True)
    os.makedirs(args.results, exist_ok=True)
    run = Runner(args.out, 1)
    model = run("models", "pull", "smollm2-135m").strip().splitlines()[-1]
    paths = prepare(run, args.data, args.out, model, args.paragraphs, args.valid)
    for name in args.rows.split(","):
        dest = os.path.join(args.results, f"{name}.json")
        if os.path.exists(dest):
            print(f"{name}: recorded in {dest}")
            continue
        result = control(run, paths, model) if name == CONTROL else row(run, name, paths)
        result.update(commit=commit(), date=datetime.date.today().isoformat(),
                      command=f"python launch/ablate_stage1.py --rows {name}")
        with open(dest, "w") as fh:
            json.dump(result, fh, indent=2)
        print(f"{name}: recovered {result['recovered']}, STS-B dev (memory) {result['sts_dev_memory']:.2f} -> {dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
