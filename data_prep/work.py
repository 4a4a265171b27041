"""What a worker process does with one unit: parse, validate, tokenize in one batch, build rows."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Optional

import pyarrow as pa

from .errors import BadRecord, is_bad_input
from .inputs import FileSkip
from .kinds import Kind
from .records import parse
from .stats import Stats
from .units import Key, Unit


@dataclass
class UnitResult:
    key: Key
    table: pa.Table
    stats: Stats
    first_bad: Optional[tuple[str, str]]  # (location, reason) of the first malformed input, if any


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a worker needs, picklable: it rebuilds tokenizer and kind itself."""

    tokenizer: str
    kind: str
    reader: object
    options: object
    strict: bool


_state: dict = {}


def init_worker(spec: WorkerSpec) -> None:
    # Processes give the parallelism; Rust threads inside each would only oversubscribe the cores.
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    from .kinds import make_kind
    from .tokenizer import load_tokenizer

    _state["encode"] = batch_encoder(load_tokenizer(spec.tokenizer))
    _state["kind"] = make_kind(spec.kind, spec.reader, spec.options)
    _state["strict"] = spec.strict


_PROBES = ["Hello world.", "  leading spaces and café", "Ünïcödé — dashes\tand\ttabs", "x" * 300, "multi\nline\n\ntext"]


def batch_encoder(tok) -> Callable[[list[str]], list[list[int]]]:
    """The fastest batch encoder that gives exactly ``tok(texts, add_special_tokens=False)``.

    Rust's ``encode_batch_fast`` (no offsets, no Python-side conversion) is about 1.7x faster than the
    transformers call; it is used only when it agrees with that call on probe texts.
    """

    def hf(texts):
        return tok(texts, add_special_tokens=False, return_attention_mask=False)["input_ids"]

    fast = getattr(getattr(tok, "backend_tokenizer", None), "encode_batch_fast", None)
    if fast is None:
        return hf

    def rust(texts):
        return [e.ids for e in fast(texts, add_special_tokens=False)]

    return rust if rust(_PROBES) == hf(_PROBES) else hf


def tokenize(encode, texts: list[str]) -> list[Optional[list[int]]]:
    """Batch-tokenize; if the batch fails, find the culprits one by one (they get None)."""
    if not texts:
        return []
    try:
        return encode(texts)
    except Exception:
        out = []
        for t in texts:
            try:
                out.append(encode([t])[0])
            except Exception:
                out.append(None)
        return out


def process_unit(unit: Unit) -> UnitResult:
    return run_unit(unit, _state["kind"], _state["encode"], _state["strict"])


def run_unit(unit: Unit, kind: Kind, encode: Callable, strict: bool) -> UnitResult:
    stats = Stats()
    first_bad = None
    prepared, where = [], []
    path = unit.file.path

    def bad(reason: str, location: str) -> bool:
        nonlocal first_bad
        stats.skip(reason, location)
        if first_bad is None and is_bad_input(reason):
            first_bad = (location, reason)
        return strict and first_bad is not None

    for item in unit.items:
        if isinstance(item, FileSkip):
            if bad(item.reason, f"{path}:{item.line}" if item.line else path):
                break
            continue
        stats.documents += 1
        location = f"{path}:{item.line}"
        try:
            prepared.append(kind.prepare(parse(item, unit.file.fmt), location, unit.file.stem))
            where.append(location)
        except BadRecord as e:
            if bad(e.reason, location):
                break

    columns: dict[str, list] = {name: [] for name in kind.features}
    if not (strict and first_bad):
        flat = tokenize(encode, [t for p in prepared for t in p.texts])
        pos = 0
        for p, location in zip(prepared, where):
            ids = flat[pos : pos + len(p.texts)]
            pos += len(p.texts)
            if any(x is None for x in ids):
                if bad("untokenizable", location):
                    break
                continue
            kind.emit(p, ids, location, columns, stats)
    table = pa.Table.from_pydict(columns, schema=kind.features.arrow_schema)
    return UnitResult(unit.key, table, stats, first_bad)
