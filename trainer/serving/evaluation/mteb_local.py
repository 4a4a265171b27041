"""MTEB task data from local folders: ``eval mteb --data-dir DIR`` (or ``$LLM2COMP_MTEB_DATA``).

A task with a folder in DIR named after it (``Banking77Classification``), or after it and one of its subsets
(``STS17-en-en``, ``AmazonCounterfactualClassification-en``), is read from that folder: one file per split
(``test.jsonl``, ``train.jsonl``; JSON lines, JSON, Parquet or CSV), the columns the task reads. The data goes
into the task's own ``dataset`` (per subset for a multilingual task, which then runs on the subsets found), the
task's ``dataset_transform`` runs as after a Hub load, and mteb's task class scores it with its own splits,
metric and protocol. A retrieval task's folder is in the BEIR layout instead (``corpus.jsonl``, ``queries.jsonl``,
``qrels/<split>.tsv``; ``mteb_local_retrieval.py``). Only the splits the task uses are read (its evaluation splits, and for classification
its training split). ``source`` describes where each task's data came from, for ``summary.json``.
"""
from __future__ import annotations

import hashlib
import os
from typing import Optional

from data_prep.errors import UserError

ENV = "LLM2COMP_MTEB_DATA"
FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}


def resolve_data_dir(arg: Optional[str]) -> Optional[str]:
    """``--data-dir``, else ``$LLM2COMP_MTEB_DATA``, else None; an absolute path to an existing folder."""
    path, origin = (arg, "--data-dir") if arg else (os.environ.get(ENV), f"${ENV}")
    if not path:
        return None
    if not os.path.isdir(path):
        raise UserError(f"{origin} {path}: no such folder")
    return os.path.abspath(path)


def local_folders(task, root: str) -> dict[str, str]:
    """subset -> folder, for the task's (selected) subsets that have a folder in ``root``."""
    name = task.metadata.name
    if not task.metadata.is_multilingual:
        folder = os.path.join(root, name)
        return {"default": folder} if os.path.isdir(folder) else {}
    found = {s: os.path.join(root, f"{name}-{s}") for s in task.hf_subsets}
    return {s: f for s, f in found.items() if os.path.isdir(f)}


def needed_splits(task) -> list[str]:
    from mteb.abstasks import AbsTaskClassification

    splits = list(task.eval_splits)
    if isinstance(task, AbsTaskClassification) and task.train_split not in splits:
        splits.append(task.train_split)
    return splits


def needed_columns(task) -> set[str]:
    """The columns mteb's task class reads (classification and STS; other types are checked by mteb)."""
    from mteb.abstasks import AbsTaskClassification
    from mteb.abstasks.sts import AbsTaskSTS

    if isinstance(task, AbsTaskClassification) and isinstance(task.input_column_name, str):
        return {task.input_column_name, task.label_column_name}
    if isinstance(task, AbsTaskSTS) and all(isinstance(c, str) for c in task.column_names):
        return {*task.column_names, "score"}
    return set()


def split_files(folder: str, splits: list[str], task_name: str) -> dict[str, str]:
    files = {}
    for split in splits:
        candidates = [os.path.join(folder, split + ext) for ext in FORMATS]
        present = [c for c in candidates if os.path.isfile(c)]
        if not present:
            raise UserError(f"{folder}: no {split}.jsonl ({task_name} reads the splits {', '.join(splits)})")
        files[split] = present[0]
    kinds = {FORMATS[os.path.splitext(f)[1]] for f in files.values()}
    if len(kinds) > 1:
        raise UserError(f"{folder}: split files in several formats ({', '.join(sorted(kinds))}); use one")
    return files


def first_bad_line(paths) -> str | None:
    """``FILE:LINE: what is wrong`` for the first line of a JSON-lines file that is not a JSON object (lines
    counted from 1, as an editor shows them); None when every line parses."""
    import json

    for path in paths:
        with open(path, encoding="utf-8", errors="replace") as fh:
            for n, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except ValueError as e:
                    return f"{path}:{n}: not valid JSON ({e})"
                if not isinstance(row, dict):
                    return f"{path}:{n}: a JSON {type(row).__name__}, not an object with the task's columns"
    return None


def read_folder(folder: str, task) -> tuple:
    """(DatasetDict of the splits the task needs, a description of the files)."""
    import datasets

    name = task.metadata.name
    files = split_files(folder, needed_splits(task), name)
    builder = FORMATS[os.path.splitext(next(iter(files.values())))[1]]
    bars, verbosity = datasets.is_progress_bar_enabled(), datasets.logging.get_verbosity()
    datasets.disable_progress_bars()  # a local file reads in a moment: no bar per split
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)  # a bad file is reported below, in one line
    try:
        data = datasets.load_dataset(builder, data_files=files)
    except Exception as e:  # a malformed file: name it, in one line (the innermost cause says what is wrong)
        bad = first_bad_line(files.values()) if builder == "json" else None
        if bad:
            raise UserError(bad) from None
        while e.__cause__ is not None:
            e = e.__cause__
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise UserError(f"{folder}: cannot be read as {builder} ({type(e).__name__}: {first})") from None
    finally:
        datasets.logging.set_verbosity(verbosity)
        if bars:
            datasets.enable_progress_bars()
    missing = needed_columns(task) - set(data[next(iter(files))].column_names)
    if missing:
        raise UserError(f"{folder}: no column {', '.join(sorted(missing))} ({name} reads "
                        f"{', '.join(sorted(needed_columns(task)))})")
    described = {split: {"file": os.path.basename(path), "rows": len(data[split]), "sha256": sha256(path)}
                 for split, path in files.items()}
    return data, {"path": folder, "splits": described}


def load_local(task, folders: dict[str, str]) -> dict:
    """Fill ``task`` with the data of ``folders`` (subset -> folder) as its own ``load_data`` would; returns the
    source record. A multilingual task keeps only the subsets that have a folder."""
    from mteb.abstasks.abstask import AbsTask

    name = task.metadata.name
    retrieval = is_plain_retrieval(task)
    if type(task).load_data is not AbsTask.load_data and not retrieval:
        raise UserError(f"{name}: a local folder cannot stand in for its data ({type(task).__mro__[1].__name__} "
                        "tasks load several Hub configurations); remove its folder from --data-dir")
    data, described = {}, {}
    for subset, folder in folders.items():
        if retrieval:
            from .mteb_local_retrieval import read_retrieval_folder

            data[subset], described[subset] = read_retrieval_folder(folder, list(task.eval_splits))
        else:
            data[subset], described[subset] = read_folder(folder, task)
    # mteb keeps retrieval data per subset, multilingual or not; other tasks only when multilingual
    task.dataset = data if retrieval or task.metadata.is_multilingual else data["default"]
    if task.metadata.is_multilingual:
        task.hf_subsets = list(folders)
    task.dataset_transform()
    task.data_loaded = True
    return {"source": "local", "subsets": described}


def is_plain_retrieval(task) -> bool:
    """A retrieval task loaded by mteb's own retrieval loader (corpus, queries, qrels; no reranking candidates)."""
    from mteb.abstasks.retrieval import AbsTaskRetrieval

    return (isinstance(task, AbsTaskRetrieval) and type(task).load_data is AbsTaskRetrieval.load_data
            and task.metadata.type == "Retrieval")


def hub_source(task) -> dict:
    """What a task loaded from the datasets cache or the Hub was: the dataset id and the revision mteb pins."""
    return {"source": "hub", "dataset": task.metadata.dataset.get("path"),
            "revision": task.metadata.dataset.get("revision"), "subsets": list(task.hf_subsets)}


def sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
