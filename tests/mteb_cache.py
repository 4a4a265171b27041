"""Test helper: MTEB task data from local files, placed where the `datasets` library looks for it offline.

Offline, `datasets` (5.x) reads a Hub dataset from its own Arrow cache
(``$HF_DATASETS_CACHE/<org>___<name>/<config>/0.0.0/<revision>/``: one Arrow stream file per split and a
``dataset_info.json``), which is what an online `llm2comp eval mteb --download-only` leaves there.
"""
from __future__ import annotations

from pathlib import Path


def prefill(datasets_cache: Path, repo_id: str, revision: str, splits: dict[str, dict[str, list]],
            config: str = "default") -> Path:
    import pyarrow as pa
    from datasets import Dataset, DatasetInfo, SplitDict, SplitInfo

    org, name = repo_id.split("/")
    d = Path(datasets_cache) / f"{org}___{name}" / config / "0.0.0" / revision
    d.mkdir(parents=True, exist_ok=True)
    split_dict = SplitDict(dataset_name=name)
    features = None
    for split, columns in splits.items():
        ds = Dataset.from_dict(columns)
        features = ds.features
        with pa.OSFile(str(d / f"{name}-{split}.arrow"), "wb") as f, pa.ipc.new_stream(f, ds.data.table.schema) as w:
            w.write_table(ds.data.table)
        split_dict.add(SplitInfo(name=split, num_examples=len(ds), dataset_name=name))
    DatasetInfo(features=features, config_name=config, dataset_name=name, splits=split_dict).write_to_directory(str(d))
    return d


def stsb_columns(csv: Path) -> dict[str, list]:
    """An STS-B file (genre, file, year, id, score, sentence 1, sentence 2) as MTEB's STS columns."""
    s1, s2, score = [], [], []
    for line in csv.read_text(encoding="utf-8").splitlines():
        cols = line.split("\t")
        if len(cols) >= 7:
            score.append(float(cols[4]))
            s1.append(cols[5])
            s2.append(cols[6])
    return {"sentence1": s1, "sentence2": s2, "score": score}
