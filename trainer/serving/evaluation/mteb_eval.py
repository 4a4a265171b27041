"""``llm2comp eval mteb --model DIR (--tasks A,B | --benchmark NAME) --output DIR``: the real ``mteb`` package.

Task data: a task with a folder in ``--data-dir`` (or ``$LLM2COMP_MTEB_DATA``) is read from it
(``mteb_local.py``); every other task loads as mteb loads it, from the Hugging Face datasets cache or the Hub.
Offline (``HF_HUB_OFFLINE=1``, or a machine without network) a task with neither a folder nor a cached copy
is named in one line and the rest are scored; ``--download-only`` fills the cache on a machine with network,
for clusters whose compute nodes have none. A malformed local folder is named in one line, the other tasks are
scored, and the command then fails naming it. ``--benchmark`` takes mteb's benchmarks and llm2comp's own lists
(``mteb_benchmarks.py``: ``llm2comp-paper``, ``llm2comp-offline``, ``llm2comp-offline6``). ``--max-length``
(512) is the tokens of a text the model reads, recorded in ``summary.json``. Every text is encoded once per task,
longest first (``mteb_dedup.py``). Under torchrun / srun the ranks share the encoding and rank 0 writes the
results. ``--model`` is an llm2comp export (instructions with its template, see mteb_model.py), a
sentence-transformers folder, or a plain causal LM with ``--pooling`` (a baseline, no instructions).
"""
from __future__ import annotations

import contextlib
import os
import sys
import time
from typing import Optional

from data_prep import jsonio
from data_prep.errors import UserError

_LOAD_ERRORS = (ConnectionError, OSError, FileNotFoundError, ValueError)


def select_tasks(tasks: Optional[str], benchmark: Optional[str]) -> list:
    import mteb

    from .mteb_benchmarks import BENCHMARKS, benchmark_tasks

    if bool(tasks) == bool(benchmark):
        raise UserError("eval mteb: give exactly one of --tasks NAME,... and --benchmark NAME")
    try:
        if benchmark in BENCHMARKS:
            return benchmark_tasks(benchmark)
        if benchmark:
            import difflib

            names = [*BENCHMARKS, *(b.name for b in mteb.get_benchmarks())]
            if benchmark not in names:  # mteb's own message lists nothing near what was meant
                near = difflib.get_close_matches(benchmark, names, n=3, cutoff=0.6)
                raise UserError(f"eval mteb: --benchmark {benchmark!r} is not a benchmark"
                                + (f"; did you mean {' or '.join(map(repr, near))}?" if near else
                                   f" (llm2comp's: {', '.join(BENCHMARKS)}; or one of mteb's, e.g. 'MTEB(eng, v2)')"))
            return list(mteb.get_benchmark(benchmark).tasks)
        return [mteb.get_task(name.strip()) for name in tasks.split(",") if name.strip()]
    except KeyError as e:
        raise UserError(f"eval mteb: {str(e).strip(chr(39)).splitlines()[0][:200]}") from None


def load_local_tasks(tasks: list, data_dir: Optional[str], say, bad: dict) -> tuple[dict, dict]:
    """Fill every task that has a folder in ``data_dir``; (task name -> source record, task name -> seconds).
    A malformed folder is said in one line and recorded in ``bad`` (task name -> what is wrong)."""
    from .mteb_local import load_local, local_folders

    sources, seconds = {}, {}
    if not data_dir:
        return sources, seconds
    for task in tasks:
        folders = local_folders(task, data_dir)
        if not folders:
            continue
        wanted = list(task.hf_subsets)
        start = time.perf_counter()
        try:
            sources[task.metadata.name] = load_local(task, folders)
        except UserError as e:  # the other tasks still run; run() fails at the end, naming it
            bad[task.metadata.name] = str(e)
            say(f"{task.metadata.name}: not evaluated, its local folder is malformed: {e}")
            continue
        seconds[task.metadata.name] = time.perf_counter() - start
        absent = [s for s in wanted if s not in folders]
        if absent:
            say(f"{task.metadata.name}: subsets {', '.join(absent)} not evaluated (no folder "
                f"{task.metadata.name}-<subset> in {data_dir}); evaluated: {', '.join(folders)}")
    return sources, seconds


def load_or_skip(tasks: list, say, sources: dict) -> list:
    """Load each task's data not already loaded (the cache, or the Hub when reachable); one line for each that
    cannot be."""
    from .mteb_local import hub_source

    ready = []
    for task in tasks:
        try:
            if not task.data_loaded:
                task.load_data()
                sources[task.metadata.name] = hub_source(task)
            ready.append(task)
        except _LOAD_ERRORS as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
            say(f"{task.metadata.name}: not evaluated, its data could not be loaded ({type(e).__name__}: {first})")
    return ready


def model_for(args, world):
    """(the mteb model, a description) for an llm2comp export, a sentence-transformers folder or a plain causal
    LM with ``--pooling``."""
    from data_prep.hub import local_folder

    from ..encoder import CONFIG, Encoder

    path = local_folder(args.model, "--model")
    plain = not os.path.exists(os.path.join(path, CONFIG)) and not os.path.exists(os.path.join(path, "modules.json"))
    if (args.pooling or args.first_token) and not plain:
        flag = "--pooling" if args.pooling else "--first-token"
        raise UserError(f"{flag}: {path} is an encoder (llm2comp export or sentence-transformers), which keeps "
                        "its own; only a plain causal LM takes it")
    if os.path.exists(os.path.join(path, CONFIG)):
        from .mteb_model import load_instructions, make_model

        device = None
        if world.size > 1:
            import torch

            device = f"cuda:{torch.cuda.current_device()}" if torch.cuda.is_available() else "cpu"
        encoder = Encoder.from_pretrained(path, device=device, dtype=args.dtype, compile=args.compile)
        encoder.max_seq_length = args.max_length  # the evaluation's length, not the training shards' (export)
        name = os.path.basename(os.path.normpath(path))
        model = make_model(encoder, f"llm2comp/{name}", load_instructions(args.instructions), args.batch_size, world)
        return model, "llm2comp", encoder.max_seq_length, encoder.compiled_blocks
    if os.path.exists(os.path.join(path, "modules.json")):
        if args.compile:
            raise UserError(f"--compile: {path} is a sentence-transformers model; it compiles llm2comp exports and causal LMs")
        from mteb.models import SentenceTransformerEncoderWrapper
        from sentence_transformers import SentenceTransformer

        st = SentenceTransformer(path)
        # its own max_seq_length is part of the model (all-MiniLM-L6-v2: 256, as its published scores used)
        st.max_seq_length = min(st.max_seq_length or args.max_length, args.max_length)
        return SentenceTransformerEncoderWrapper(st), "sentence-transformers", st.max_seq_length, None
    if os.path.exists(os.path.join(path, "config.json")):
        model, lm = plain_model(path, args)
        return model, f"causal LM, {args.pooling} pooling", args.max_length, lm.compiled_blocks
    raise UserError(f"--model {path}: neither an llm2comp export, a sentence-transformers folder nor a HF model")


def plain_model(path: str, args):
    from .models import POOLINGS, PooledLM
    from .mteb_model import make_text_model

    if args.pooling not in POOLINGS:
        raise UserError(f"--model {path} is a plain causal LM: choose --pooling {'|'.join(POOLINGS)}")
    if args.instructions:
        raise UserError(f"--instructions: {path} is not an llm2comp export, which alone knows its instruction template")
    lm = PooledLM(path, args.pooling, first_token=args.first_token, dtype=args.dtype, max_length=args.max_length,
                  compile=args.compile)
    encoders: dict = {}

    def encode(texts, instruction, batch_size):
        return encoders.setdefault(batch_size, lm.encoder(batch_size))(texts)

    name = f"{os.path.basename(os.path.normpath(path))}-{args.pooling}"
    return make_text_model(encode, name, lm.model.config.hidden_size, "local", None, args.batch_size), lm


@contextlib.contextmanager
def quiet(deliberate_v1: bool, bars: bool = True):
    """mteb's classification protocol fits its logistic regression with max_iter=100, and sklearn warns at every
    fit that stops there (ten per task): part of the protocol, not news. Tasks a benchmark list picked in their
    v1 version on purpose need no notice that a .v2 exists. ``bars``: else no progress bar of datasets' either
    (mteb maps a retrieval corpus with one)."""
    import logging
    import warnings

    import datasets
    from sklearn.exceptions import ConvergenceWarning

    shown = datasets.is_progress_bar_enabled()
    if not bars:
        datasets.disable_progress_bars()

    superseded = logging.getLogger("mteb.abstasks.abstask")
    drop = lambda record: "is superseded by" not in record.getMessage()  # noqa: E731
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        if deliberate_v1:
            warnings.filterwarnings("ignore", message=".*is superseded by.*")
            superseded.addFilter(drop)
        try:
            yield
        finally:
            superseded.removeFilter(drop)
            if shown and not bars:
                datasets.enable_progress_bars()


def run(args) -> int:
    from ...engine.dist import World, world_from_env
    from .mteb_local import resolve_data_dir

    world = world_from_env() if "WORLD_SIZE" in os.environ or "SLURM_NTASKS" in os.environ else World(0, 1, 0)
    say = print if world.main else (lambda *a, **k: None)
    if world.size > 1:
        from ...engine.dist import init_distributed

        init_distributed(world)
    if not args.download_only and not args.output:
        raise UserError("eval mteb: --output DIR is required (unless --download-only)")
    if args.max_length < 1 or args.batch_size < 1:
        flag = "--max-length" if args.max_length < 1 else "--batch-size"
        raise UserError(f"eval mteb: {flag} must be at least 1")
    if not args.download_only:  # before any task loads (minutes for a benchmark): the model is there
        from data_prep.hub import local_folder

        local_folder(args.model, "--model")
    data_dir = resolve_data_dir(args.data_dir)
    tasks = select_tasks(args.tasks, args.benchmark)
    planned = len(tasks)
    bad: dict[str, str] = {}
    sources, load_s = load_local_tasks(tasks, data_dir, say, bad)
    tasks = [t for t in tasks if t.metadata.name not in bad]
    if bad and not tasks:
        raise UserError(next(iter(bad.values())))
    tasks = load_or_skip(tasks, say, sources)
    if args.download_only:
        where = "cached" if not load_s else "cached or in --data-dir"
        say(f"{len(tasks)} of {planned} tasks {where}: {', '.join(t.metadata.name for t in tasks)}")
        return 0 if len(tasks) == planned else 1
    if not tasks:
        raise UserError("eval mteb: no task could be loaded (offline without cached data? see the lines above; "
                        "--data-dir DIR with a folder per task, or `llm2comp eval mteb --download-only` on a "
                        "machine with network)")
    import mteb

    from .mteb_benchmarks import BENCHMARKS
    from .mteb_dedup import make_dedup
    from .mteb_summary import aggregate, render, task_entry

    inner, kind, max_length, compiled = model_for(args, world)
    model = make_dedup(inner)
    start = time.perf_counter()
    bars = world.main and args.progress
    with quiet(deliberate_v1=args.benchmark in BENCHMARKS, bars=bars):
        result = mteb.evaluate(model, tasks, cache=None, show_progress_bar=bars,
                               encode_kwargs={"batch_size": args.batch_size, "show_progress_bar": bars})
    wall = time.perf_counter() - start
    if world.main:
        from pathlib import Path

        os.makedirs(args.output, exist_ok=True)
        results = {}
        for tr in result.task_results:
            tr.to_disk(Path(args.output) / f"{tr.task_name}.json")
            results[tr.task_name] = task_entry(tr, sources[tr.task_name], model.stats.get(tr.task_name),
                                               load_s.get(tr.task_name))
        dtype = "the model's own"
        if kind != "sentence-transformers":  # what auto became on this machine
            import torch

            from ..encoder import resolve_dtype

            dtype = str(resolve_dtype(args.dtype, "cuda" if torch.cuda.is_available() else "cpu")).replace("torch.", "")
        summary = {"model": args.model, "kind": kind, "dtype": dtype, "batch_size": args.batch_size,
                   "max_length": max_length, "data_dir": data_dir, "results": results,
                   "aggregate": aggregate(results, args.benchmark, planned), "evaluate_s": round(wall, 1)}
        if bad:
            summary["not_evaluated"] = bad
        if args.pooling:
            summary["pooling"] = args.pooling
        if compiled is not None:
            summary["compiled_blocks"] = compiled  # read back from the model: [compiled, total]
        if kind == "llm2comp":
            summary["instructions"] = inner.instructions_used
        with open(os.path.join(args.output, "summary.json"), "w") as fh:
            jsonio.dump(summary, fh, indent=2)
        say(render(summary))
        say(f"results: {args.output}")
    sys.stdout.flush()
    if bad:
        names = ", ".join(bad)
        raise UserError(f"eval mteb: {names} not evaluated, local folder malformed (the other tasks were scored): "
                        f"{next(iter(bad.values()))}")
    return 0
