"""``manifest.json``: what a prep output holds and how it was made; readers for the trainer and merge."""
from __future__ import annotations

import json
import os

from .errors import PrepError
from .shards import _write_json_atomic, sha256_file

FORMAT_VERSION = 1
MANIFEST = "manifest.json"


def write_manifest(out_dir: str, manifest: dict) -> None:
    _write_json_atomic(os.path.join(out_dir, MANIFEST), manifest)


def read_manifest(data_dir: str, kind: str | None = None) -> dict:
    path = os.path.join(data_dir, MANIFEST)
    if not os.path.isdir(data_dir):
        raise PrepError(f"{data_dir}: no such directory")
    if not os.path.exists(path):
        raise PrepError(f"{data_dir}: no {MANIFEST}; not a finished `llm2comp prep` output (rerun prep to finish it)")
    try:
        with open(path) as fh:
            manifest = json.load(fh)
    except (ValueError, OSError) as e:
        raise PrepError(f"{path}: unreadable manifest: {e}") from None
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise PrepError(f"{path}: format_version {version!r}, this llm2comp reads {FORMAT_VERSION}")
    if kind is not None and manifest.get("kind") != kind:
        raise PrepError(f"{data_dir}: holds {manifest.get('kind')!r} shards, expected {kind!r} (made by `llm2comp prep {kind}`)")
    return manifest


def verify_shards(data_dir: str, manifest: dict) -> None:
    """Every shard present with the sha256 the manifest records."""
    for shard in manifest["shards"]:
        path = os.path.join(data_dir, shard["file"])
        if not os.path.exists(path):
            raise PrepError(f"{path}: shard listed in {MANIFEST} is missing")
        digest = sha256_file(path)
        if digest != shard["sha256"]:
            raise PrepError(f"{path}: sha256 {digest[:12]}… differs from the manifest's {shard['sha256'][:12]}… (corrupt shard)")


def check_tokenizer(manifest: dict, identity: dict, data_dir: str) -> None:
    """Refuse shards tokenized with another tokenizer than the model's."""
    want, have = manifest["tokenizer"], identity
    if want["hash"] != have["hash"]:
        raise PrepError(
            f"{data_dir}: shards were tokenized with {want['name_or_path']} ({want['hash'][:19]}…) but the model's "
            f"tokenizer is {have['name_or_path']} ({have['hash'][:19]}…); rerun `llm2comp prep` with the model's tokenizer"
        )
