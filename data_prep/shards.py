"""Writing Arrow shards atomically, with a resume point after each, and the datasets metadata files.

Each shard is written to ``NAME.tmp`` and renamed when complete. Beside it, ``.prep_state/NAME.json``
records the shard's sha256 and where the input stream stands after it (unit key, row offset in that
unit, counters of finished units), so a rerun after a crash continues at that exact row and writes
byte-identical shards.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from typing import Optional

import pyarrow as pa
import pyarrow.compute as pc

from . import jsonio
from .stats import Stats
from .units import Key

STATE_DIR = ".prep_state"
BATCH_ROWS = 1024  # rows per Arrow record batch inside a shard


@dataclass(frozen=True)
class ShardInfo:
    file: str
    rows: int
    tokens: int
    sha256: str


@dataclass(frozen=True)
class Pointer:
    """Where the rows after a shard begin: in unit ``key`` after ``offset`` rows, or after it if done."""

    key: Optional[Key]
    offset: int
    unit_done: bool

    def start(self) -> Optional[Key]:
        """The first unit key still to process (its first ``offset`` rows are written if not done)."""
        if self.key is None:
            return None
        return (self.key[0], self.key[1] + 1) if self.unit_done else self.key


def shard_name(index: int) -> str:
    return f"data-{index:05d}.arrow"


def sha256_file(path: str) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def count_tokens(table: pa.Table) -> int:
    total = 0
    for col in table.columns:
        t = col.type
        if pa.types.is_list(t) or pa.types.is_large_list(t):
            arr = col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
            arr = pc.list_flatten(arr)
            while pa.types.is_list(arr.type):
                arr = pc.list_flatten(arr)
            total += len(arr)
    return total


def _write_json_atomic(path: str, obj) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        jsonio.dump(obj, fh, indent=2, sort_keys=True)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


class ShardWriter:
    def __init__(self, out_dir: str, schema: pa.Schema, shard_rows: int, shards: list[ShardInfo], done: Stats):
        self.out_dir = out_dir
        self.schema = schema
        self.shard_rows = shard_rows
        self.shards = list(shards)
        self.done = done  # counters of units whose rows are all written
        self._writer: Optional[pa.ipc.RecordBatchStreamWriter] = None
        self._pending: list[pa.Table] = []
        self._pending_rows = 0
        self._rows = 0  # rows in the open shard
        self._tokens = 0
        os.makedirs(os.path.join(out_dir, STATE_DIR), exist_ok=True)

    def add(self, key: Key, table: pa.Table, stats: Stats) -> None:
        offset, n = 0, table.num_rows
        while offset < n:
            take = min(self.shard_rows - self._rows, n - offset)
            self._append(table.slice(offset, take))
            offset += take
            if self._rows == self.shard_rows:
                if offset == n:
                    self.done.add(stats)
                    self._close(Pointer(key, n, True))
                    return
                self._close(Pointer(key, offset, False))
        self.done.add(stats)

    def finish(self) -> list[ShardInfo]:
        if self._rows:
            self._close(Pointer(None, 0, True))
        return self.shards

    def abort(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def _append(self, part: pa.Table) -> None:
        if self._writer is None:
            path = os.path.join(self.out_dir, shard_name(len(self.shards)) + ".tmp")
            self._sink = pa.OSFile(path, "wb")
            self._writer = pa.ipc.new_stream(self._sink, self.schema)
        self._pending.append(part)
        self._pending_rows += part.num_rows
        self._rows += part.num_rows
        self._tokens += count_tokens(part)
        self._flush(final=False)

    def _flush(self, final: bool) -> None:
        # Batches of exactly BATCH_ROWS from the shard's start: the layout is independent of how
        # rows arrived, which keeps resumed shards byte-identical.
        if self._pending_rows < BATCH_ROWS and not (final and self._pending_rows):
            return
        table = pa.concat_tables(self._pending).combine_chunks()
        whole = table.num_rows if final else table.num_rows - table.num_rows % BATCH_ROWS
        for start in range(0, whole, BATCH_ROWS):
            for batch in table.slice(start, min(BATCH_ROWS, whole - start)).to_batches():
                self._writer.write_batch(batch)
        rest = table.slice(whole)
        self._pending = [rest] if rest.num_rows else []
        self._pending_rows = rest.num_rows

    def _close(self, pointer: Pointer) -> None:
        self._flush(final=True)
        self._writer.close()
        self._sink.close()
        self._writer = None
        name = shard_name(len(self.shards))
        final = os.path.join(self.out_dir, name)
        with open(final + ".tmp", "rb+") as fh:
            os.fsync(fh.fileno())
        info = ShardInfo(name, self._rows, self._tokens, sha256_file(final + ".tmp"))
        # The resume record lands first; a shard counts as done only when both exist (see load_progress).
        _write_json_atomic(
            os.path.join(self.out_dir, STATE_DIR, name + ".json"),
            {"shard": asdict(info), "resume": asdict(pointer), "stats": self.done.to_dict()},
        )
        os.replace(final + ".tmp", final)
        self.shards.append(info)
        self._rows = self._tokens = 0


def load_progress(out_dir: str) -> tuple[list[ShardInfo], Stats, Pointer]:
    """Completed shards of an interrupted run, and the point to continue from; removes partial files."""
    shards, stats, pointer = [], Stats(), Pointer(None, 0, True)
    state = os.path.join(out_dir, STATE_DIR)
    while True:
        name = shard_name(len(shards))
        side, path = os.path.join(state, name + ".json"), os.path.join(out_dir, name)
        if not (os.path.exists(side) and os.path.exists(path)):
            break
        with open(side) as fh:
            rec = json.load(fh)
        info = ShardInfo(**rec["shard"])
        if sha256_file(path) != info.sha256:
            break
        shards.append(info)
        stats = Stats.from_dict(rec["stats"])
        r = rec["resume"]
        pointer = Pointer(tuple(r["key"]) if r["key"] is not None else None, r["offset"], r["unit_done"])
    keep = {s.file for s in shards}
    for name in os.listdir(out_dir):
        if name.startswith("data-") and name not in keep:
            os.remove(os.path.join(out_dir, name))
    for name in os.listdir(state) if os.path.isdir(state) else []:
        if name.startswith("data-") and name[: -len(".json")] not in keep:
            os.remove(os.path.join(state, name))
    return shards, stats, pointer


def write_dataset_files(out_dir: str, features, shards: list[ShardInfo]) -> None:
    """``dataset_info.json`` and ``state.json``, so ``datasets.load_from_disk(out_dir)`` opens the shards."""
    fingerprint = hashlib.sha256("".join(s.sha256 for s in shards).encode()).hexdigest()[:16]
    _write_json_atomic(
        os.path.join(out_dir, "dataset_info.json"),
        {"citation": "", "description": "", "features": features.to_dict(), "homepage": "", "license": ""},
    )
    _write_json_atomic(
        os.path.join(out_dir, "state.json"),
        {
            "_data_files": [{"filename": s.file} for s in shards],
            "_fingerprint": fingerprint,
            "_format_columns": None,
            "_format_kwargs": {},
            "_format_type": None,
            "_output_all_columns": False,
            "_split": None,
        },
    )
