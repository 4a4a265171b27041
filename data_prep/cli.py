"""Arguments of ``llm2comp prep {compression,sentences,pairs,merge}`` and their translation to a PrepConfig."""
from __future__ import annotations

import argparse
import os

from .errors import PrepError, at_least
from .kinds import CompressionOptions, PairsOptions, ReaderOptions, SentencesOptions
from .units import Slice


def _default_workers() -> int:
    return int(os.environ.get("SLURM_CPUS_PER_TASK") or os.cpu_count() or 1)


def _common(p: argparse.ArgumentParser, text_default: str = "text") -> None:
    p.add_argument("--input", nargs="+", required=True, metavar="PATH",
                   help="files, globs or directories: .txt, .jsonl, .parquet, each optionally .gz")
    p.add_argument("--tokenizer", required=True, metavar="TOK", help="local Hugging Face tokenizer or model folder")
    p.add_argument("--output", required=True, metavar="DIR")
    p.add_argument("--workers", type=at_least(1), default=_default_workers(),
                   help="tokenizer processes (default: SLURM_CPUS_PER_TASK or all cores)")
    p.add_argument("--strict", action="store_true", help="stop at the first bad record (exit 2) instead of skipping it")
    p.add_argument("--overwrite", action="store_true", help="replace an output made with other settings")
    p.add_argument("--max-tokens", type=at_least(1), default=512)
    p.add_argument("--text-field", default=text_default, help="JSONL/parquet field holding the text")
    p.add_argument("--id-field", default="id", help="field used as doc_id when present (else file:line)")
    p.add_argument("--paragraphs", action="store_true", help=".txt: documents are blank-line separated")
    p.add_argument("--shard-rows", type=at_least(1), default=50_000)
    p.add_argument("--chunk-docs", type=at_least(1), default=1000, help="records per unit of work")
    p.add_argument("--slice", default=None, metavar="I/N",
                   help="process part I of N (default: from SLURM_ARRAY_TASK_ID/SLURM_ARRAY_TASK_COUNT)")
    p.add_argument("--no-progress", action="store_true")


def add_arguments(prep: argparse.ArgumentParser) -> None:
    sub = prep.add_subparsers(dest="kind", required=True, metavar="{compression,sentences,pairs,merge}")

    c = sub.add_parser("compression", help="(context, continuation) pairs for stage 1")
    _common(c)
    c.add_argument("--min-context", type=at_least(1), default=10)
    c.add_argument("--min-continuation", type=at_least(1), default=10)
    c.add_argument("--seed", type=int, default=0)

    s = sub.add_parser("sentences", help="one text per row for stage 2")
    _common(s)
    s.add_argument("--min-tokens", type=at_least(1), default=1)

    p = sub.add_parser("pairs", help="query/positive/negatives for stage 3")
    _common(p)
    p.add_argument("--instructions", metavar="FILE", help="JSON object: task name -> instruction")
    p.add_argument("--instruction", default="", help="instruction for records with neither instruction nor task")
    p.add_argument("--template", default="{instruction}: {query}")

    m = sub.add_parser("merge", help="join the slices of a sliced prep run")
    m.add_argument("slices", nargs="+", metavar="DIR")
    m.add_argument("--output", required=True, metavar="DIR")
    m.add_argument("--overwrite", action="store_true")
    prep.set_defaults(func=run)


def load_instructions(path: str) -> dict[str, str]:
    from . import jsonio

    data = jsonio.read(path, "--instructions", PrepError)
    if not isinstance(data, dict):
        raise PrepError(f"--instructions {path}: expected a JSON object of task name -> instruction")
    for key, value in data.items():
        if not isinstance(value, str):
            raise PrepError(f"--instructions {path}: key {key!r} maps to a {type(value).__name__}, expected a string")
    return data


def config_from_args(args: argparse.Namespace):
    from .pipeline import PrepConfig

    if args.kind == "compression":
        options = CompressionOptions(args.max_tokens, args.min_context, args.min_continuation, args.seed)
    elif args.kind == "sentences":
        options = SentencesOptions(args.max_tokens, args.min_tokens)
    else:
        instructions = load_instructions(args.instructions) if args.instructions else {}
        options = PairsOptions(args.max_tokens, args.template, args.instruction, instructions)
    return PrepConfig(
        kind=args.kind,
        inputs=args.input,
        tokenizer=args.tokenizer,
        output=args.output,
        options=options,
        reader=ReaderOptions(args.text_field, args.id_field, args.paragraphs),
        workers=args.workers,
        strict=args.strict,
        overwrite=args.overwrite,
        shard_rows=args.shard_rows,
        chunk_docs=args.chunk_docs,
        slice=Slice.parse(args.slice),
        progress=not args.no_progress,
    )


def run(args: argparse.Namespace) -> int:
    if args.kind == "merge":
        from .merge import merge

        merge(args.slices, args.output, args.overwrite)
        return 0
    from .pipeline import run as run_prep

    run_prep(config_from_args(args))
    return 0
