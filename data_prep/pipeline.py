"""One prep run: inputs -> units -> worker processes -> ordered, atomic shards -> manifest."""
from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from hashlib import sha256
from multiprocessing import get_context
from typing import Iterator

from tqdm import tqdm

from . import __version__
from .errors import PrepError
from .inputs import InputFile, resolve_inputs
from .kinds import ReaderOptions, make_kind
from .manifest import FORMAT_VERSION, MANIFEST, read_manifest, write_manifest
from .shards import STATE_DIR, ShardWriter, _write_json_atomic, load_progress, write_dataset_files
from .stats import Stats
from .tokenizer import load_tokenizer, tokenizer_identity
from .units import Slice, Unit, iter_units
from .work import UnitResult, WorkerSpec, init_worker, process_unit


@dataclass
class PrepConfig:
    kind: str
    inputs: list[str]
    tokenizer: str
    output: str
    options: object  # CompressionOptions | SentencesOptions | PairsOptions
    reader: ReaderOptions = field(default_factory=ReaderOptions)
    workers: int = 1
    strict: bool = False
    overwrite: bool = False
    shard_rows: int = 50_000
    chunk_docs: int = 1000
    slice: Slice = field(default_factory=Slice)
    progress: bool = True

    def args(self) -> dict:
        d = asdict(self)
        d["slice"] = str(self.slice)
        return d


def _settings(cfg: PrepConfig, files: list[InputFile], identity: dict) -> dict:
    """What decides the output's content: a directory made with other settings is not resumed."""
    return {
        "kind": cfg.kind,
        "options": asdict(cfg.options),
        "reader": asdict(cfg.reader),
        "tokenizer_hash": identity["hash"],
        "inputs": [{"path": f.path, "bytes": f.size} for f in files],
        "slice": str(cfg.slice),
        "shard_rows": cfg.shard_rows,
        "chunk_docs": cfg.chunk_docs,
    }


def differences(old: dict, new: dict, prefix: str = "") -> str:
    """The settings that differ, down to the nested key, with both values: ``options.min_context 10 -> 20``."""
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            out.append(differences(a, b, f"{prefix}{k}."))
        else:
            show = lambda v: json.dumps(v)[:60]  # noqa: E731
            out.append(f"{prefix}{k} {show(a)} -> {show(b)}")
    return ", ".join(out) or "none"


def _open_output(out: str, settings: dict, overwrite: bool) -> str:
    """'fresh', 'resume' or 'complete'; refuses a directory made with other settings."""
    state_file = os.path.join(out, STATE_DIR, "settings.json")
    if os.path.exists(out) and not os.path.isdir(out):
        raise PrepError(f"--output {out}: is a file, not a folder for the shards")
    if os.path.isdir(out) and os.listdir(out):
        old = None
        if os.path.exists(os.path.join(out, MANIFEST)):
            old = read_manifest(out).get("settings")
            status = "complete"
        elif os.path.exists(state_file):
            with open(state_file) as fh:
                old = json.load(fh)
            status = "resume"
        if old == settings and not overwrite:
            return status
        if not overwrite:
            if old is None:
                raise PrepError(f"{out}: not empty and not an llm2comp prep output; pass --overwrite to replace it")
            raise PrepError(
                f"{out}: made with other settings (differ: {differences(old, settings)}); "
                "pass --overwrite to replace it, or choose another --output"
            )
        shutil.rmtree(out)
    os.makedirs(os.path.join(out, STATE_DIR), exist_ok=True)
    _write_json_atomic(state_file, settings)
    return "fresh"


def _results(units: Iterator[Unit], spec: WorkerSpec, workers: int) -> Iterator[UnitResult]:
    """Unit results in unit order, with at most 2 units per worker in flight (bounded memory)."""
    if workers <= 1:
        init_worker(spec)
        for unit in units:
            yield process_unit(unit)
        return
    ex = ProcessPoolExecutor(workers, mp_context=get_context("fork"), initializer=init_worker, initargs=(spec,))
    pending: deque = deque()
    try:
        for unit in units:
            pending.append(ex.submit(process_unit, unit))
            if len(pending) >= 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        ex.shutdown(wait=True, cancel_futures=True)


def run(cfg: PrepConfig) -> dict:
    t0 = time.monotonic()
    if cfg.workers < 1 or cfg.shard_rows < 1 or cfg.chunk_docs < 1:
        raise PrepError("--workers, --shard-rows and --chunk-docs must be at least 1")
    files = resolve_inputs(cfg.inputs)
    if cfg.kind == "pairs" and any(f.fmt == "txt" for f in files):
        bad = next(f for f in files if f.fmt == "txt")
        raise PrepError(f"{bad.path}: pairs need .jsonl or .parquet records with query/positive fields")
    kind = make_kind(cfg.kind, cfg.reader, cfg.options)
    if cfg.workers > 1:
        os.environ["TOKENIZERS_PARALLELISM"] = "false"  # before the tokenizer is first used (fork)
    tok = load_tokenizer(cfg.tokenizer)
    identity = tokenizer_identity(tok, cfg.tokenizer)
    settings = _settings(cfg, files, identity)

    status = _open_output(cfg.output, settings, cfg.overwrite)
    if status == "complete":
        manifest = read_manifest(cfg.output)
        print(f"{cfg.output}: already complete with these settings ({manifest['totals']['rows']:,} rows); nothing to do")
        return manifest
    shards, done, pointer = load_progress(cfg.output) if status == "resume" else ([], Stats(), None)
    if shards:
        print(f"{cfg.output}: resuming after {len(shards)} complete shard(s)", file=sys.stderr)
    start = pointer.start() if pointer else None

    writer = ShardWriter(cfg.output, kind.features.arrow_schema, cfg.shard_rows, shards, done)
    spec = WorkerSpec(cfg.tokenizer, cfg.kind, cfg.reader, cfg.options, cfg.strict)
    units = iter_units(files, cfg.chunk_docs, cfg.reader.paragraphs, list(kind.input_fields), cfg.slice, start)
    seen = Stats()
    t_loop = time.monotonic()
    bar = tqdm(unit=" docs", disable=not cfg.progress or None, dynamic_ncols=True, desc=f"prep {cfg.kind}")
    try:
        for result in _results(units, spec, cfg.workers):
            if cfg.strict and result.first_bad:
                location, reason = result.first_bad
                raise PrepError(f"{location}: {reason} (--strict stops at the first bad record)")
            table = result.table
            if pointer and not pointer.unit_done and result.key == pointer.key:
                table = table.slice(pointer.offset)  # those rows are in the last complete shard
            writer.add(result.key, table, result.stats)
            seen.add(result.stats)
            bar.update(result.stats.documents)
            rate = seen.tokens / max(time.monotonic() - t_loop, 1e-9)
            bar.set_postfix_str(f"{rate:,.0f} tok/s", refresh=False)
        shards = writer.finish()
    finally:
        writer.abort()
        bar.close()

    totals = writer.done
    if totals.rows == 0 and cfg.slice.count > 1:
        # One task of an array with more slices than the input has chunks (or whose records were all skipped):
        # an empty slice, so that the array finishes and merge, which refuses an empty whole, completes.
        print(f"prep {cfg.kind}: slice {cfg.slice.index}/{cfg.slice.count} of {totals.documents:,} input records "
              "gave no rows; written as an empty slice for prep merge", file=sys.stderr)
    elif totals.rows == 0:
        raise PrepError(
            f"no rows were produced from {totals.documents:,} input records (skipped: {totals.skipped_summary()}"
            + "".join(f"; first {r}: {', '.join(ex[:3])}" for r, ex in sorted(totals.examples.items()))
            + ")"
        )
    write_dataset_files(cfg.output, kind.features, shards)
    manifest = {
        "format_version": FORMAT_VERSION,
        "kind": cfg.kind,
        "package": {"name": "llm2comp", "version": __version__},
        "tokenizer": identity,
        "args": cfg.args(),
        "settings": settings,
        "settings_hash": sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest(),
        "slice": {"index": cfg.slice.index, "count": cfg.slice.count},
        "shards": [asdict(s) for s in shards],
        "totals": {
            "documents": totals.documents,
            "rows": totals.rows,
            "tokens": totals.tokens,
            "truncated": totals.truncated,
            "shards": len(shards),
        },
        "skipped": totals.to_dict()["skipped"],
        "skipped_examples": totals.to_dict()["skipped_examples"],
    }
    write_manifest(cfg.output, manifest)
    shutil.rmtree(os.path.join(cfg.output, STATE_DIR), ignore_errors=True)
    _summary(cfg, manifest, seen, time.monotonic() - t0)
    return manifest


def _summary(cfg: PrepConfig, manifest: dict, seen: Stats, elapsed: float) -> None:
    t = manifest["totals"]
    lines = [
        f"prep {cfg.kind}: {t['documents']:,} records -> {t['rows']:,} rows, {t['tokens']:,} tokens "
        f"in {t['shards']} shard(s) at {cfg.output}",
        f"time {elapsed:.1f} s; this run {seen.documents / elapsed:,.0f} docs/s, {seen.tokens / elapsed:,.0f} tokens/s",
    ]
    if t["truncated"]:
        lines.append(f"truncated to --max-tokens: {t['truncated']:,}")
    for reason, n in manifest["skipped"].items():
        lines.append(f"skipped {reason}: {n:,} (first: {', '.join(manifest['skipped_examples'][reason])})")
    if not manifest["skipped"]:
        lines.append("skipped: none")
    print("\n".join(lines))
