"""Any mteb encoder, encoding each distinct text once per task, longest first, and timing it.

mteb calls ``encode`` once per column and split: an STS task encodes ``sentence1`` and then ``sentence2``
(SICK-R repeats most of its sentences), a classification task encodes its training subsample once per
evaluation split (AmazonCounterfactual: validation and test). ``DedupEncoder`` keeps, for the task being
evaluated, every embedding it has computed (keyed by prompt type and row), hands the wrapped model only the
rows it has not seen, each once and longest first, and forgets them when the next task starts. The wrapped
model's similarity is kept, so scores are the wrapped model's own. ``stats[task]``: texts mteb asked for,
distinct texts encoded, and the seconds spent encoding them.
"""
from __future__ import annotations

import json
import time

import numpy as np


def make_dedup(inner):
    """``inner``: an mteb encoder (``AbsEncoder``: ``encode``, ``similarity``, ``mteb_model_meta``)."""
    from mteb.models.abs_encoder import AbsEncoder

    class DedupEncoder(AbsEncoder):
        def __init__(self):
            self.inner, self.mteb_model_meta = inner, inner.mteb_model_meta
            self.task, self.cache, self.stats = None, {}, {}

        def encode(self, inputs, *, task_metadata, hf_split, hf_subset, prompt_type=None, **kwargs):
            data = inputs.dataset
            if "text" not in data.column_names:  # not a text input: nothing to share
                return self.inner.encode(inputs, task_metadata=task_metadata, hf_split=hf_split,
                                         hf_subset=hf_subset, prompt_type=prompt_type, **kwargs)
            if task_metadata.name != self.task:
                self.task, self.cache = task_metadata.name, {}
            stats = self.stats.setdefault(self.task, {"texts": 0, "encoded": 0, "encode_s": 0.0})
            keys = row_keys(data, getattr(prompt_type, "value", prompt_type))
            first: dict = {}
            for i, k in enumerate(keys):
                if k not in self.cache and k not in first:
                    first[k] = i
            if first:
                texts = data["text"]
                rows = sorted(first.values(), key=lambda i: -len(texts[i]))  # longest first
                start = time.perf_counter()
                emb = np.asarray(self.inner.encode(loader_like(inputs, data.select(rows)), task_metadata=task_metadata,
                                                   hf_split=hf_split, hf_subset=hf_subset, prompt_type=prompt_type,
                                                   **kwargs))
                stats["encode_s"] += time.perf_counter() - start
                for i, e in zip(rows, emb):
                    self.cache[keys[i]] = e
            stats["texts"] += len(keys)
            stats["encoded"] += len(first)
            return np.stack([self.cache[k] for k in keys]) if keys else np.zeros((0, 0), dtype=np.float32)

        def similarity(self, embeddings1, embeddings2):
            return self.inner.similarity(embeddings1, embeddings2)

        def similarity_pairwise(self, embeddings1, embeddings2):
            return self.inner.similarity_pairwise(embeddings1, embeddings2)

        def __getattr__(self, name):  # what else mteb or llm2comp asks of the model (instructions_used, ...)
            if name == "inner":
                raise AttributeError(name)
            return getattr(self.inner, name)

    return DedupEncoder()


def row_keys(data, prompt_type) -> list:
    """One key per row: the prompt type and the text, plus the row's other inputs where it has any (an id
    names a row, it is not an input)."""
    others = [c for c in data.column_names if c not in ("text", "id")]
    if not others:
        return [(prompt_type, t) for t in data["text"]]
    columns = {c: data[c] for c in ["text", *others]}
    return [(prompt_type, json.dumps({c: v[i] for c, v in columns.items()}, sort_keys=True, default=str))
            for i in range(len(data))]


def loader_like(inputs, dataset):
    """A DataLoader over ``dataset`` built as ``inputs`` was (batch size, collation)."""
    from torch.utils.data import DataLoader

    return DataLoader(dataset, batch_size=inputs.batch_size or 32, collate_fn=inputs.collate_fn,
                      num_workers=inputs.num_workers)
