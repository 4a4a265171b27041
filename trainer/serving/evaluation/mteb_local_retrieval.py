"""A retrieval task's data from a local folder in the BEIR layout, put where mteb's own loader puts it.

FOLDER/corpus.jsonl (``_id``, ``text``, optional ``title``), FOLDER/queries.jsonl (``_id``, ``text``) and
FOLDER/qrels/<split>.tsv (``query-id``, ``corpus-id``, ``score``, with a header): the three parts mteb 2.x's
``RetrievalDatasetLoader`` reads from the Hub. As it does: ``_id`` becomes ``id``, every id is a string, the
queries are kept only where the qrels name them, and the qrels become ``{query_id: {doc_id: score}}``. The result
goes into ``task.dataset[subset][split]`` as mteb's ``RetrievalSplitData``, so mteb's own evaluator and metrics
score it (a document is read as ``title + " " + text``, by mteb). Files are read line by line, so that a bad
line is named by its number: a missing part, a line that is not a JSON object, a missing field, a duplicate id,
a qrel naming an unknown document or query, a score that is not an integer.
"""
from __future__ import annotations

import csv
import json
import os

from data_prep.errors import UserError

QRELS_COLUMNS = ("query-id", "corpus-id", "score")


def read_records(path: str, required: tuple[str, ...], optional: tuple[str, ...] = ()) -> dict[str, dict]:
    """id -> {field: str} of a JSON-lines file, in file order."""
    if not os.path.isfile(path):
        raise UserError(f"{path}: no such file (a retrieval folder holds corpus.jsonl, queries.jsonl and "
                        "qrels/<split>.tsv)")
    records: dict[str, dict] = {}
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{path}:{n}: not a JSON object ({e.msg})") from None
            if not isinstance(row, dict):
                raise UserError(f"{path}:{n}: not a JSON object")
            missing = [k for k in required if row.get(k) is None]
            if missing:
                raise UserError(f"{path}:{n}: no {', '.join(missing)} (each line needs {', '.join(required)})")
            key = str(row["_id"])
            if key in records:
                raise UserError(f"{path}:{n}: _id {key!r} again (first seen earlier in the file)")
            records[key] = {k: str(row[k]) if row.get(k) is not None else "" for k in (*required, *optional)}
    if not records:
        raise UserError(f"{path}: no records")
    return records


def read_qrels(path: str, corpus: dict, queries: dict) -> dict[str, dict[str, int]]:
    if not os.path.isfile(path):
        raise UserError(f"{path}: no such file (qrels/<split>.tsv: query-id, corpus-id, score, with a header)")
    qrels: dict[str, dict[str, int]] = {}
    with open(path, encoding="utf-8", newline="") as fh:
        rows = csv.reader(fh, delimiter="\t")
        header = next(rows, None)
        if header is None or tuple(h.strip() for h in header[:3]) != QRELS_COLUMNS:
            raise UserError(f"{path}:1: header {header!r}, expected {chr(9).join(QRELS_COLUMNS)!r}")
        for n, row in enumerate(rows, 2):
            if not row or not "".join(row).strip():
                continue
            if len(row) < 3:
                raise UserError(f"{path}:{n}: {len(row)} columns, expected 3 ({', '.join(QRELS_COLUMNS)})")
            qid, did, score = row[0].strip(), row[1].strip(), row[2].strip()
            if did not in corpus:
                raise UserError(f"{path}:{n}: corpus-id {did!r} is not in corpus.jsonl")
            if qid not in queries:
                raise UserError(f"{path}:{n}: query-id {qid!r} is not in queries.jsonl")
            try:
                value = int(score)
            except ValueError:
                raise UserError(f"{path}:{n}: score {score!r} is not an integer") from None
            qrels.setdefault(qid, {})[did] = value
    if not qrels:
        raise UserError(f"{path}: no qrels")
    return qrels


def read_retrieval_folder(folder: str, splits: list[str]) -> tuple[dict, dict]:
    """({split: RetrievalSplitData}, a description of the files with their sha256) of a BEIR folder."""
    from datasets import Dataset
    from mteb.abstasks.retrieval_dataset_loaders import RetrievalSplitData

    from .mteb_local import sha256

    paths = {"corpus": os.path.join(folder, "corpus.jsonl"), "queries": os.path.join(folder, "queries.jsonl")}
    corpus = read_records(paths["corpus"], ("_id", "text"), ("title",))
    queries = read_records(paths["queries"], ("_id", "text"))
    corpus_ds = Dataset.from_dict({"id": list(corpus), "title": [r["title"] for r in corpus.values()],
                                   "text": [r["text"] for r in corpus.values()]})
    data, described = {}, {}
    for split in splits:
        qrels_path = os.path.join(folder, "qrels", f"{split}.tsv")
        qrels = read_qrels(qrels_path, corpus, queries)
        kept = [q for q in queries if q in qrels]  # as mteb's loader: only the queries the qrels name
        data[split] = RetrievalSplitData(corpus=corpus_ds,
                                         queries=Dataset.from_dict({"id": kept, "text": [queries[q]["text"] for q in kept]}),
                                         relevant_docs=qrels, top_ranked=None)
        files = {**paths, "qrels": qrels_path}
        rows = {"corpus": len(corpus), "queries": len(kept), "qrels": sum(map(len, qrels.values()))}
        described[split] = {part: {"file": os.path.relpath(p, folder), "rows": rows[part], "sha256": sha256(p)}
                            for part, p in files.items()}
        described[split]["queries"]["rows_in_file"] = len(queries)
    return data, {"path": folder, "splits": described}
