"""Throughput and peak memory of ``llm2comp prep compression`` against a plain ``datasets`` baseline.

Both sides read the same JSONL(.gz) file, tokenize each record's ``text`` with the same Hugging Face
tokenizer (``add_special_tokens=False``), cut the tokens into windows of at most 512 tokens, split each
window into context/continuation ids and write Arrow files, with the same number of worker processes:

* stage:    ``python -m trainer.cli prep compression --input F --tokenizer T --output D --workers N ...``
* baseline: ``datasets.load_dataset("json", ...)``, ``.map(fn, batched=True, num_proc=N)`` with the
  project's own ``window_bounds``/``draw_split``, then ``save_to_disk``.

Each side runs in a subprocess of its own and is timed end to end (interpreter start, imports, load,
tokenize, write). Peak memory is the peak of the summed RSS of that subprocess and all its children,
sampled every 50 ms. Tokens written: ``totals.tokens`` of the stage's manifest; for the baseline the
summed lengths of the saved context and continuation ids (counted after the run, outside its time).

Run from the repository root:

    .venv/bin/python bench/prep_throughput.py                     # 40,000 docs, 2 workers
    .venv/bin/python bench/prep_throughput.py --limit-docs 0 --workers 4 --repeats 3

It prints a table and writes everything to ``bench/out/prep_throughput.json`` (``--json``).
"""
from __future__ import annotations

import argparse
import datetime
import gzip
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from importlib import metadata

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_TOKENIZER = os.path.join(os.environ.get("LLM2COMP_HOME") or os.path.expanduser("~/.cache/llm2comp"), "models", "smollm2-135m")
DEFAULT_INPUT = os.path.join(REPO, "..", "shared", "data", "corpus", "wiki_paragraphs.train.jsonl.gz")
DEFAULT_JSON = os.path.join(REPO, "bench", "out", "prep_throughput.json")

# Compression settings, passed explicitly to the stage and used as-is by the baseline.
MAX_TOKENS, MIN_CONTEXT, MIN_CONTINUATION, SEED = 512, 10, 10, 0
SAMPLE_S = 0.05
MIB = 1024 * 1024


@dataclass
class RunResult:
    side: str
    workers: int
    docs: int
    tokens: int
    seconds: float
    peak_rss_mib: float

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


# --------------------------------------------------------------------------- measuring a subprocess


def _tree_rss(proc) -> int:
    """Summed RSS in bytes of a psutil process and all its descendants (0 for those already gone)."""
    import psutil

    total = 0
    try:
        members = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return 0
    for p in members:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def run_measured(cmd: list[str], env: dict[str, str]) -> tuple[float, int]:
    """Run ``cmd`` from the repo root; return (wall seconds, peak summed RSS of its process tree in bytes)."""
    import psutil

    peak = 0
    t0 = time.perf_counter()
    child = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    proc = psutil.Process(child.pid)
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _tree_rss(proc))
            done.wait(SAMPLE_S)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    output, _ = child.communicate()
    seconds = time.perf_counter() - t0
    done.set()
    sampler.join()
    if child.returncode != 0:
        sys.exit(f"command failed (exit {child.returncode}): {' '.join(cmd)}\n{output}")
    return seconds, peak


def child_env(cache_dir: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO, env.get("PYTHONPATH")) if p)
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", HF_DATASETS_CACHE=cache_dir,
               HF_DATASETS_DISABLE_PROGRESS_BARS="1")
    return env


# --------------------------------------------------------------------------- the two sides


def run_stage(inputs: list[str], tokenizer: str, workers: int, docs: int, work: str) -> RunResult:
    out = os.path.join(work, "stage")
    cmd = [sys.executable, "-m", "trainer.cli", "prep", "compression", "--input", *inputs,
           "--tokenizer", tokenizer, "--output", out, "--workers", str(workers),
           "--max-tokens", str(MAX_TOKENS), "--min-context", str(MIN_CONTEXT),
           "--min-continuation", str(MIN_CONTINUATION), "--seed", str(SEED),
           "--overwrite", "--no-progress"]
    seconds, peak = run_measured(cmd, child_env(os.path.join(work, "hf_cache")))
    with open(os.path.join(out, "manifest.json")) as fh:
        totals = json.load(fh)["totals"]
    if totals["documents"] != docs:
        print(f"warning: the stage read {totals['documents']:,} records, expected {docs:,}", file=sys.stderr)
    return RunResult("stage", workers, docs, int(totals["tokens"]), seconds, peak / MIB)


def run_baseline(inputs: list[str], tokenizer: str, workers: int, docs: int, work: str) -> RunResult:
    out = os.path.join(work, "baseline")
    cache = os.path.join(work, "hf_cache")
    cmd = [sys.executable, os.path.abspath(__file__), "--baseline-child", "--input", *inputs,
           "--tokenizer", tokenizer, "--workers", str(workers), "--child-output", out, "--child-cache", cache]
    seconds, peak = run_measured(cmd, child_env(cache))
    return RunResult("baseline", workers, docs, count_saved_tokens(out), seconds, peak / MIB)


def count_saved_tokens(path: str) -> int:
    """Summed lengths of context_ids and continuation_ids of a dataset saved with save_to_disk."""
    import pyarrow.compute as pc
    from datasets import load_from_disk

    table = load_from_disk(path).data.table
    return sum(int(pc.sum(pc.list_value_length(table[col])).as_py() or 0)
               for col in ("context_ids", "continuation_ids"))


def baseline_child(inputs: list[str], tokenizer: str, workers: int, output: str, cache: str) -> None:
    """The baseline proper (runs in its own process): load_dataset -> map(num_proc) -> save_to_disk."""
    if workers > 1:
        os.environ["TOKENIZERS_PARALLELISM"] = "false"  # as the stage does: processes, not Rust threads
    from datasets import load_dataset
    from transformers import AutoTokenizer

    from data_prep.kinds import FEATURES
    from data_prep.windows import draw_split, window_bounds

    tok = AutoTokenizer.from_pretrained(tokenizer)

    def windows(batch: dict[str, list], indices: list[int]) -> dict[str, list]:
        out: dict[str, list] = {"context_ids": [], "continuation_ids": [], "doc_id": [], "window": []}
        keep = [i for i, t in enumerate(batch["text"]) if isinstance(t, str) and t.strip()]
        ids = tok([batch["text"][i] for i in keep], add_special_tokens=False,
                  return_attention_mask=False)["input_ids"] if keep else []
        for i, tokens in zip(keep, ids):
            if len(tokens) < MIN_CONTEXT + MIN_CONTINUATION:
                continue
            raw_id = batch["id"][i] if "id" in batch else None
            doc = str(raw_id) if raw_id not in (None, "") else f"line:{indices[i] + 1}"
            for w, (a, b) in enumerate(window_bounds(len(tokens), MAX_TOKENS)):
                cut = a + draw_split(SEED, doc, w, b - a, MIN_CONTEXT, MIN_CONTINUATION)
                out["context_ids"].append(tokens[a:cut])
                out["continuation_ids"].append(tokens[cut:b])
                out["doc_id"].append(doc)
                out["window"].append(w)
        return out

    ds = load_dataset("json", data_files=inputs, split="train", cache_dir=cache)
    ds = ds.map(windows, batched=True, with_indices=True, num_proc=workers if workers > 1 else None,
                remove_columns=ds.column_names, features=FEATURES["compression"])
    ds.save_to_disk(output)


# --------------------------------------------------------------------------- input, machine, report


def limited_input(paths: list[str], limit: int, work: str) -> tuple[list[str], int]:
    """The files both sides read and their record count: the first ``limit`` lines copied to one .jsonl.gz."""
    if limit <= 0:
        return paths, sum(count_lines(p) for p in paths)
    dest = os.path.join(work, "input.jsonl.gz")
    n = 0
    with gzip.open(dest, "wt", encoding="utf-8", compresslevel=1) as out:
        for path in paths:
            with _open_text(path) as fh:
                for line in fh:
                    if n >= limit:
                        break
                    if line.strip():
                        out.write(line if line.endswith("\n") else line + "\n")
                        n += 1
    return [dest], n


def _open_text(path: str):
    return gzip.open(path, "rt", encoding="utf-8") if path.endswith(".gz") else open(path, encoding="utf-8")


def count_lines(path: str) -> int:
    with _open_text(path) as fh:
        return sum(1 for line in fh if line.strip())


def machine_info() -> dict:
    model = "unknown"
    try:
        with open("/proc/cpuinfo") as fh:
            model = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), model)
    except OSError:
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    versions = {}
    for pkg in ("datasets", "tokenizers", "transformers", "pyarrow"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    return {"cpu_count": os.cpu_count(), "usable_cpus": usable, "cpu_model": model,
            "python": platform.python_version(), "packages": versions}


def git_commit() -> dict:
    def git(*args: str) -> str:
        r = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True)
        return r.stdout.strip() if r.returncode == 0 else ""

    return {"commit": git("rev-parse", "--short", "HEAD") or "unknown", "dirty": bool(git("status", "--porcelain"))}


def summarize(runs: list[RunResult], side: str) -> RunResult:
    """One row per side: median seconds over the repeats, the highest peak RSS."""
    mine = [r for r in runs if r.side == side]
    return RunResult(side, mine[0].workers, mine[0].docs, mine[0].tokens,
                     statistics.median(r.seconds for r in mine), max(r.peak_rss_mib for r in mine))


def print_table(rows: list[RunResult]) -> None:
    header = f"{'side':<9} {'workers':>7} {'docs':>9} {'tokens':>12} {'seconds':>8} {'tokens/s':>11} {'peak RSS MiB':>13}"
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r.side:<9} {r.workers:>7} {r.docs:>9,} {r.tokens:>12,} {r.seconds:>8.2f} "
              f"{r.tokens_per_s:>11,.0f} {r.peak_rss_mib:>13,.0f}")


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--input", nargs="+", default=[DEFAULT_INPUT], metavar="PATH", help="JSONL(.gz) with a text field")
    p.add_argument("--tokenizer", default=DEFAULT_TOKENIZER, metavar="TOK", help="local Hugging Face tokenizer folder")
    p.add_argument("--limit-docs", type=int, default=40_000, metavar="N",
                   help="use the first N records (0: all); both sides read the same temporary copy")
    p.add_argument("--workers", type=int, default=2, help="worker processes on each side (default 2)")
    p.add_argument("--repeats", type=int, default=1, help="runs of each side; the table shows the median time")
    p.add_argument("--json", default=DEFAULT_JSON, metavar="PATH", help="where to write the results")
    # Internal: the baseline's own subprocess.
    p.add_argument("--baseline-child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--child-output", help=argparse.SUPPRESS)
    p.add_argument("--child-cache", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.baseline_child:
        baseline_child(args.input, args.tokenizer, args.workers, args.child_output, args.child_cache)
        return 0
    if not os.path.isdir(args.tokenizer):
        print(f"tokenizer {args.tokenizer} not found; run `llm2comp models pull smollm2-135m` first", file=sys.stderr)
        return 2
    missing = [p for p in args.input if not os.path.exists(p)]
    if missing:
        print(f"input not found: {', '.join(missing)}", file=sys.stderr)
        return 2
    if args.workers < 1 or args.repeats < 1:
        print("--workers and --repeats must be at least 1", file=sys.stderr)
        return 2

    started = datetime.datetime.now(datetime.timezone.utc)
    runs: list[RunResult] = []
    with tempfile.TemporaryDirectory(prefix="prep_bench_") as tmp:
        inputs, docs = limited_input([os.path.abspath(p) for p in args.input], args.limit_docs, tmp)
        print(f"{docs:,} docs, {args.workers} worker(s), {args.repeats} repeat(s)", file=sys.stderr)
        for i in range(args.repeats):
            for side, fn in (("stage", run_stage), ("baseline", run_baseline)):
                work = tempfile.mkdtemp(prefix=f"{side}_", dir=tmp)
                result = fn(inputs, args.tokenizer, args.workers, docs, work)
                shutil.rmtree(work, ignore_errors=True)
                print(f"  repeat {i + 1} {side}: {result.seconds:.2f} s, {result.peak_rss_mib:,.0f} MiB",
                      file=sys.stderr)
                runs.append(result)

    stage, baseline = summarize(runs, "stage"), summarize(runs, "baseline")
    same_tokens = all(r.tokens == stage.tokens for r in runs)
    speed_ratio = stage.tokens_per_s / baseline.tokens_per_s if baseline.tokens_per_s else float("nan")
    memory_ratio = stage.peak_rss_mib / baseline.peak_rss_mib if baseline.peak_rss_mib else float("nan")
    machine, git = machine_info(), git_commit()

    print(f"machine: {machine['cpu_count']} CPUs ({machine['usable_cpus']} usable), {machine['cpu_model']}")
    print(f"commit: {git['commit']}{' (dirty tree)' if git['dirty'] else ''}   date: {started.isoformat(timespec='seconds')}")
    print()
    print_table([stage, baseline])
    print()
    print(f"stage/baseline tokens/s: {speed_ratio:.2f}x   peak memory stage/baseline: {memory_ratio:.2f}x")
    if not same_tokens:
        print("WARNING: the sides wrote different token counts: "
              + ", ".join(f"{r.side}={r.tokens:,}" for r in runs), file=sys.stderr)

    report = {
        "date": started.isoformat(timespec="seconds"),
        "git": git,
        "machine": machine,
        "settings": {"inputs": args.input, "limit_docs": args.limit_docs, "docs": docs, "tokenizer": args.tokenizer,
                     "workers": args.workers, "repeats": args.repeats, "max_tokens": MAX_TOKENS,
                     "min_context": MIN_CONTEXT, "min_continuation": MIN_CONTINUATION, "seed": SEED,
                     "rss_sample_s": SAMPLE_S},
        "summary": [{**asdict(r), "tokens_per_s": r.tokens_per_s} for r in (stage, baseline)],
        "runs": [{**asdict(r), "tokens_per_s": r.tokens_per_s} for r in runs],
        "ratios": {"tokens_per_s_stage_over_baseline": speed_ratio, "peak_rss_stage_over_baseline": memory_ratio},
        "same_tokens": same_tokens,
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as fh:
        json.dump(report, fh, indent=2)
    print(f"wrote {args.json}")
    assert same_tokens, "stage and baseline wrote different numbers of tokens"
    return 0


if __name__ == "__main__":
    sys.exit(main())
