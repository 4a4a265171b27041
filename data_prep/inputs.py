"""Finding input files and reading them as raw records, without parsing or tokenizing.

Records stay raw (bytes for text formats, a dict for parquet) so that parsing, validation and
tokenization happen in the worker processes; the reader only splits the stream.
"""
from __future__ import annotations

import glob
import gzip
import io
import os
import shutil
import tempfile
import zlib
from dataclasses import dataclass
from typing import Iterator, Union

from .errors import PrepError

FORMATS = {".txt": "txt", ".jsonl": "jsonl", ".parquet": "parquet"}
_SNIFF_BYTES = 8192


@dataclass(frozen=True)
class InputFile:
    path: str  # the path as found (what locations and default doc ids show)
    fmt: str  # txt | jsonl | parquet
    gzipped: bool

    @property
    def size(self) -> int:
        return os.path.getsize(self.path)

    @property
    def stem(self) -> str:
        name = os.path.basename(self.path)
        if self.gzipped:
            name = name[:-3]
        return os.path.splitext(name)[0]


@dataclass(frozen=True)
class RawRecord:
    line: int  # 1-based line of the record's first line (row number for parquet)
    payload: Union[bytes, dict]


@dataclass(frozen=True)
class FileSkip:
    """A whole file (or its unreadable rest) that yields no records."""

    reason: str
    line: int  # 0 when the whole file is concerned


def classify(path: str) -> InputFile | None:
    name = path.lower()
    gzipped = name.endswith(".gz")
    if gzipped:
        name = name[:-3]
    fmt = FORMATS.get(os.path.splitext(name)[1])
    return InputFile(path, fmt, gzipped) if fmt else None


def resolve_inputs(specs: list[str]) -> list[InputFile]:
    """Expand paths, globs and directories into a deterministic, de-duplicated file list."""
    found: list[InputFile] = []
    seen: set[str] = set()
    expected = "/".join(FORMATS) + " (optionally .gz)"
    for spec in specs:
        if glob.has_magic(spec):
            paths = sorted(p for p in glob.glob(spec, recursive=True) if os.path.isfile(p))
            if not paths:
                raise PrepError(f"{spec}: no file matches this pattern")
            files = [classify(p) for p in paths]
            if not any(files):
                raise PrepError(f"{spec}: no matching file is {expected}")
            files = [f for f in files if f]
        elif os.path.isdir(spec):
            files = []
            for root, dirs, names in os.walk(spec):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                for name in sorted(names):
                    f = classify(os.path.join(root, name)) if not name.startswith(".") else None
                    if f:
                        files.append(f)
            if not files:
                raise PrepError(f"{spec}: directory holds no {expected} file")
        elif os.path.isfile(spec):
            f = classify(spec)
            if f is None:
                raise PrepError(f"{spec}: unsupported input format; expected {expected}")
            files = [f]
        else:
            raise PrepError(f"{spec}: no such file or directory")
        for f in files:
            key = os.path.realpath(f.path)
            if key not in seen:
                seen.add(key)
                found.append(f)
    return found


def _open_bytes(f: InputFile) -> io.BufferedIOBase:
    try:
        return gzip.open(f.path, "rb") if f.gzipped else open(f.path, "rb")
    except OSError as e:
        raise PrepError(f"{f.path}: cannot open: {e.strerror or e}") from None


_READ_ERRORS = (OSError, EOFError, zlib.error)


def iter_records(f: InputFile, paragraphs: bool, columns: list[str]) -> Iterator[RawRecord | FileSkip]:
    """Yield the file's records in order; problems with the file itself come as FileSkip."""
    if f.fmt == "parquet":
        yield from _iter_parquet(f, columns)
        return
    fh = _open_bytes(f)
    with fh:
        try:
            head = fh.peek(_SNIFF_BYTES)[:_SNIFF_BYTES] if hasattr(fh, "peek") else b""
        except _READ_ERRORS:
            yield FileSkip("corrupt_file", 0)
            return
        if not head:
            yield FileSkip("empty_file", 0)
            return
        if b"\x00" in head:
            yield FileSkip("binary_file", 0)
            return
        lineno = 0
        block: list[bytes] = []
        start = 0
        try:
            for lineno, line in enumerate(fh, 1):
                line = line.rstrip(b"\r\n")
                if paragraphs and f.fmt == "txt":
                    if line.strip():
                        if not block:
                            start = lineno
                        block.append(line)
                    elif block:
                        yield RawRecord(start, b"\n".join(block))
                        block = []
                elif line.strip():
                    yield RawRecord(lineno, line)
        except _READ_ERRORS:
            # A truncated or corrupt compressed stream: what was read stays, the rest is counted.
            yield FileSkip("corrupt_file", lineno + 1)
            return
        if block:
            yield RawRecord(start, b"\n".join(block))


def _iter_parquet(f: InputFile, columns: list[str]) -> Iterator[RawRecord | FileSkip]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    tmp = None
    try:
        path = f.path
        if f.gzipped:  # parquet needs random access: decompress to a temporary file first
            tmp = tempfile.NamedTemporaryFile(suffix=".parquet", delete=False)
            with gzip.open(f.path, "rb") as src:
                shutil.copyfileobj(src, tmp)
            tmp.close()
            path = tmp.name
        try:
            pf = pq.ParquetFile(path)
        except (pa.ArrowException, *_READ_ERRORS):
            yield FileSkip("corrupt_file", 0)
            return
        names = set(pf.schema_arrow.names)
        wanted = [c for c in columns if c in names]
        if pf.metadata.num_rows == 0:
            yield FileSkip("empty_file", 0)
            return
        row = 0
        try:
            for batch in pf.iter_batches(batch_size=4096, columns=wanted):
                for rec in batch.to_pylist():
                    row += 1
                    yield RawRecord(row, rec)
        except (pa.ArrowException, *_READ_ERRORS):
            yield FileSkip("corrupt_file", row + 1)
    except _READ_ERRORS:
        yield FileSkip("corrupt_file", 0)
    finally:
        if tmp is not None:
            os.unlink(tmp.name)
