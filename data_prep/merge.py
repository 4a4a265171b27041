"""``llm2comp prep merge``: join the slices of one sliced prep run into one dataset and manifest."""
from __future__ import annotations

import json
import os
import shutil
from hashlib import sha256

from datasets import Features

from .errors import PrepError
from .manifest import FORMAT_VERSION, read_manifest, verify_shards, write_manifest
from .shards import ShardInfo, shard_name, write_dataset_files
from .stats import Stats


def merge(slice_dirs: list[str], output: str, overwrite: bool = False) -> dict:
    if not slice_dirs:
        raise PrepError("merge needs at least one slice directory")
    manifests = [read_manifest(d) for d in slice_dirs]
    first, first_dir = manifests[0], slice_dirs[0]

    def common(m: dict) -> dict:
        s = dict(m["settings"])
        s.pop("slice")
        return s

    for d, m in zip(slice_dirs[1:], manifests[1:]):
        if common(m) != common(first):
            from .pipeline import differences

            raise PrepError(f"{d}: made with other settings than {first_dir} (differ: {differences(common(first), common(m))}); "
                            "not slices of one run")
    count = first["slice"]["count"]
    by_index: dict[int, str] = {}
    for d, m in zip(slice_dirs, manifests):
        if m["slice"]["count"] != count:
            raise PrepError(f"{d}: slice {m['slice']['index']}/{m['slice']['count']} but {first_dir} is of {count} slices")
        i = m["slice"]["index"]
        if i in by_index:
            raise PrepError(f"{d}: slice {i}/{count} given twice (also {by_index[i]})")
        by_index[i] = d
    missing = sorted(set(range(count)) - set(by_index))
    if missing:
        raise PrepError(f"slices {', '.join(f'{i}/{count}' for i in missing)} are missing; merge needs all {count}")

    if os.path.exists(output) and os.listdir(output):
        if not overwrite:
            raise PrepError(f"{output}: not empty; pass --overwrite to replace it")
        shutil.rmtree(output)
    os.makedirs(output, exist_ok=True)

    shards: list[ShardInfo] = []
    totals = Stats()
    order = sorted(range(len(slice_dirs)), key=lambda j: manifests[j]["slice"]["index"])
    for j in order:
        d, m = slice_dirs[j], manifests[j]
        verify_shards(d, m)
        for s in m["shards"]:
            name = shard_name(len(shards))
            src, dst = os.path.join(d, s["file"]), os.path.join(output, name)
            try:
                os.link(src, dst)  # same filesystem: no copy
            except OSError:
                shutil.copyfile(src, dst)
            shards.append(ShardInfo(name, s["rows"], s["tokens"], s["sha256"]))
        totals.add(
            Stats.from_dict(
                {**{k: m["totals"][k] for k in ("documents", "rows", "tokens", "truncated")},
                 "skipped": m["skipped"], "skipped_examples": m["skipped_examples"]}
            )
        )

    if not shards:
        raise PrepError(f"no rows in any of the {count} slices ({', '.join(by_index[i] for i in range(count))}): "
                        "nothing to merge")
    settings = {**common(first), "slice": f"merged from {count}"}
    write_dataset_files(output, Features.from_dict(_features_dict(first_dir)), shards)
    stats = totals.to_dict()
    manifest = {
        "format_version": FORMAT_VERSION,
        "kind": first["kind"],
        "package": first["package"],
        "tokenizer": first["tokenizer"],
        "args": {**first["args"], "slice": None, "merged_from": [by_index[i] for i in range(count)]},
        "settings": settings,
        "settings_hash": sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest(),
        "slice": {"index": 0, "count": 1, "merged_from": count},
        "shards": [s.__dict__ for s in shards],
        "totals": {**{k: stats[k] for k in ("documents", "rows", "tokens", "truncated")}, "shards": len(shards)},
        "skipped": stats["skipped"],
        "skipped_examples": stats["skipped_examples"],
    }
    write_manifest(output, manifest)
    print(f"merged {count} slices -> {manifest['totals']['rows']:,} rows in {len(shards)} shards at {output}")
    return manifest


def _features_dict(data_dir: str) -> dict:
    with open(os.path.join(data_dir, "dataset_info.json")) as fh:
        return json.load(fh)["features"]
