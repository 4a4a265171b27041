"""Opening `llm2comp prep` outputs for training: right kind, same tokenizer as the model, intact shards."""
from __future__ import annotations

from data_prep.errors import UserError
from data_prep.manifest import check_tokenizer, read_manifest, verify_shards


def open_shards(path: str, kind: str | tuple[str, ...], tokenizer_identity: dict, verify: bool = True):
    """``kind``: the shard kind the stage reads, or a tuple of kinds it can read."""
    if not path:
        raise UserError("data.path is empty: give the output directory of `llm2comp prep` (override data=DIR)")
    if isinstance(kind, tuple):
        manifest = read_manifest(path)
        if manifest.get("kind") not in kind:
            raise UserError(f"{path}: holds {manifest.get('kind')!r} shards, expected one of "
                            f"{', '.join(map(repr, kind))} (made by `llm2comp prep {kind[0]}`)")
    else:
        manifest = read_manifest(path, kind)
    check_tokenizer(manifest, tokenizer_identity, path)
    if verify:
        verify_shards(path, manifest)
    import datasets

    dataset = datasets.load_from_disk(path)
    if len(dataset) == 0:
        raise UserError(f"{path}: holds no rows")
    return dataset, manifest
