"""Units of work: consecutive records of one file, keyed (file index, chunk index); and slicing.

Units are the grain of parallelism, of ``--slice I/N`` and of resume. Their keys depend only on
the input list and ``--chunk-docs``, so every worker count and every slice sees the same units.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterator, Optional

from .errors import PrepError
from .inputs import FileSkip, InputFile, RawRecord, iter_records

Key = tuple[int, int]


@dataclass(frozen=True)
class Unit:
    key: Key
    file: InputFile
    items: list  # RawRecord | FileSkip, in file order


@dataclass(frozen=True)
class Slice:
    index: int = 0
    count: int = 1

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    @classmethod
    def parse(cls, text: Optional[str]) -> "Slice":
        """``I/N`` from the flag, else the SLURM array task, else the whole input."""
        if text is None:
            task, count = os.environ.get("SLURM_ARRAY_TASK_ID"), os.environ.get("SLURM_ARRAY_TASK_COUNT")
            if task is None or count is None:
                return cls()
            first = int(os.environ.get("SLURM_ARRAY_TASK_MIN", "0"))
            text = f"{int(task) - first}/{count}"
        try:
            index, count = (int(p) for p in text.split("/"))
        except ValueError:
            raise PrepError(f"--slice {text!r}: expected I/N, e.g. 3/16") from None
        if not 0 <= index < count:
            raise PrepError(f"--slice {text}: need 0 <= I < N")
        return cls(index, count)

    def by_file(self, n_files: int) -> bool:
        # With at least as many files as slices, whole files go to slices and each slice reads only
        # its own files; otherwise chunks of records are dealt round-robin.
        return n_files >= self.count

    def owns(self, key: Key, n_files: int) -> bool:
        file_idx, chunk_idx = key
        turn = file_idx if self.by_file(n_files) else file_idx + chunk_idx
        return turn % self.count == self.index


def iter_units(
    files: list[InputFile],
    chunk_docs: int,
    paragraphs: bool,
    columns: list[str],
    part: Slice,
    start: Optional[Key] = None,
) -> Iterator[Unit]:
    """This slice's units in key order, from key ``start`` on (inclusive) when resuming."""
    n = len(files)
    for file_idx, f in enumerate(files):
        if part.by_file(n) and not part.owns((file_idx, 0), n):
            continue
        if start is not None and file_idx < start[0]:
            continue
        chunk_idx, items = 0, []
        for item in iter_records(f, paragraphs, columns):
            items.append(item)
            if len(items) == chunk_docs or isinstance(item, FileSkip):
                key = (file_idx, chunk_idx)
                if part.owns(key, n) and (start is None or key >= start):
                    yield Unit(key, f, items)
                chunk_idx, items = chunk_idx + 1, []
        if items:
            key = (file_idx, chunk_idx)
            if part.owns(key, n) and (start is None or key >= start):
                yield Unit(key, f, items)


__all__ = ["Unit", "Slice", "Key", "iter_units", "RawRecord", "FileSkip"]
