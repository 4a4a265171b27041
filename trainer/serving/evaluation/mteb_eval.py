"""``llm2comp eval mteb --model DIR (--tasks A,B | --benchmark NAME) --output DIR``: the real ``mteb`` package.

Offline (``HF_HUB_OFFLINE=1``, or a machine without network) it scores every task whose data is already in
the Hugging Face datasets cache, names each task it could not load in one line, and scores the rest;
``--download-only`` fills the cache on a machine with network, for clusters whose compute nodes have none.
Under torchrun / srun the ranks share the encoding and rank 0 writes the results. ``--model`` is an
llm2comp export (instructions with its template, see mteb_model.py) or a sentence-transformers folder.
"""
from __future__ import annotations

import json
import os
import sys
from typing import Optional

from data_prep.errors import UserError

_LOAD_ERRORS = (ConnectionError, OSError, FileNotFoundError, ValueError)


def select_tasks(tasks: Optional[str], benchmark: Optional[str]):
    import mteb

    if bool(tasks) == bool(benchmark):
        raise UserError("eval mteb: give exactly one of --tasks NAME,... and --benchmark NAME")
    try:
        if benchmark:
            return list(mteb.get_benchmark(benchmark).tasks)
        return [mteb.get_task(name.strip()) for name in tasks.split(",") if name.strip()]
    except KeyError as e:
        raise UserError(f"eval mteb: {str(e).strip(chr(39)).splitlines()[0][:200]}") from None


def load_or_skip(tasks: list, say) -> list:
    """Load each task's data (the cache, or the Hub when reachable); one line for each that cannot be."""
    ready = []
    for task in tasks:
        try:
            if not task.data_loaded:
                task.load_data()
            ready.append(task)
        except _LOAD_ERRORS as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
            say(f"{task.metadata.name}: not evaluated, its data could not be loaded ({type(e).__name__}: {first})")
    return ready


def model_for(path: str, instructions_file: Optional[str], batch_size: int, world):
    """(the mteb model, a description) for an llm2comp export or a sentence-transformers folder."""
    from data_prep.hub import local_folder

    from ..encoder import CONFIG, Encoder

    path = local_folder(path, "--model")
    if os.path.exists(os.path.join(path, CONFIG)):
        from .mteb_model import load_instructions, make_model

        device = None
        if world.size > 1:
            import torch

            device = f"cuda:{torch.cuda.current_device()}" if torch.cuda.is_available() else "cpu"
        encoder = Encoder.from_pretrained(path, device=device)
        name = os.path.basename(os.path.normpath(path))
        return make_model(encoder, f"llm2comp/{name}", load_instructions(instructions_file), batch_size, world), "llm2comp"
    if os.path.exists(os.path.join(path, "modules.json")):
        from sentence_transformers import SentenceTransformer

        return SentenceTransformer(path), "sentence-transformers"
    raise UserError(f"--model {path}: neither an llm2comp export nor a sentence-transformers folder")


def run(args) -> int:
    from ...engine.dist import World, world_from_env

    world = world_from_env() if "WORLD_SIZE" in os.environ or "SLURM_NTASKS" in os.environ else World(0, 1, 0)
    say = print if world.main else (lambda *a, **k: None)
    if world.size > 1:
        from ...engine.dist import init_distributed

        init_distributed(world)
    if not args.download_only and not args.output:
        raise UserError("eval mteb: --output DIR is required (unless --download-only)")
    tasks = select_tasks(args.tasks, args.benchmark)
    if args.download_only:
        loaded = load_or_skip(tasks, say)
        say(f"{len(loaded)} of {len(tasks)} tasks cached: {', '.join(t.metadata.name for t in loaded)}")
        return 0 if len(loaded) == len(tasks) else 1
    tasks = load_or_skip(tasks, say)
    if not tasks:
        raise UserError("eval mteb: no task could be loaded (offline without cached data? see the lines above, "
                        "and `llm2comp eval mteb --download-only` on a machine with network)")
    import mteb

    model, kind = model_for(args.model, args.instructions, args.batch_size, world)
    result = mteb.evaluate(model, tasks, cache=None, encode_kwargs={"batch_size": args.batch_size},
                           show_progress_bar=world.main)
    summary = {"model": args.model, "kind": kind, "results": {}}
    if world.main:
        os.makedirs(args.output, exist_ok=True)
        from pathlib import Path

        for tr in result.task_results:
            tr.to_disk(Path(args.output) / f"{tr.task_name}.json")
            score = tr.main_score
            summary["results"][tr.task_name] = {"main_score": 100 * score, "splits": sorted(tr.scores)}
        if hasattr(model, "instructions_used"):
            summary["instructions"] = model.instructions_used
        with open(os.path.join(args.output, "summary.json"), "w") as fh:
            json.dump(summary, fh, indent=2)
        say("| task | main score (x100) |\n|---|---:|")
        for name, r in summary["results"].items():
            say(f"| {name} | {r['main_score']:.2f} |")
        say(f"results: {args.output}")
    sys.stdout.flush()
    return 0
