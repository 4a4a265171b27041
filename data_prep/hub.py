"""Hugging Face Hub ids wherever a local model or tokenizer folder is accepted (``Qwen/Qwen2-1.5B``).

An id is resolved to its snapshot folder in huggingface_hub's cache: the cached copy when there is one
(no network needed), else a download of the files a model needs (configs, safetensors weights, tokenizer),
unless ``HF_HUB_OFFLINE`` is set. Offline without a cached copy is one line naming the id and the cache.
"""
from __future__ import annotations

import os
import re

from .errors import PrepError

# What loading a model and its tokenizer reads; not the .bin / .pth / GGUF duplicates repos often carry.
PATTERNS = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken", "tokenizer*"]
_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def looks_like_hub_id(name: str) -> bool:
    return bool(_ID.match(name)) and not name.startswith(".") and ".." not in name


def cache_dir() -> str:
    """huggingface_hub's cache folder, read from the environment now (not when the library was imported)."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return os.path.join(os.environ["HF_HOME"], "hub")
    from huggingface_hub import constants

    return constants.HF_HUB_CACHE


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def local_folder(path: str, what: str) -> str:
    """A local folder as it is, or a Hub id's folder in the Hub's cache; ``what`` names the setting in errors."""
    if os.path.isdir(path):
        return path
    if looks_like_hub_id(path):
        return hub_snapshot(path, what)
    raise PrepError(f"{what} {path}: no such directory, nor a Hugging Face Hub id (org/name)")


def hub_snapshot(repo_id: str, what: str) -> str:
    """The local folder of ``repo_id``'s files; ``what`` names the setting in errors (``model.path``)."""
    from huggingface_hub import snapshot_download

    cache = cache_dir()
    try:
        return snapshot_download(repo_id, allow_patterns=PATTERNS, cache_dir=cache, local_files_only=True)
    except Exception:  # not cached (LocalEntryNotFoundError), or an unreadable cache entry
        if offline():
            raise PrepError(f"{what} {repo_id}: not in the Hugging Face cache {cache} and HF_HUB_OFFLINE is set; "
                            "fetch it on a machine with network (huggingface-cli download) into that cache") from None
    try:
        return snapshot_download(repo_id, allow_patterns=PATTERNS, cache_dir=cache)
    except Exception as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise PrepError(f"{what} {repo_id}: no local folder of that name, and the Hub gave no copy ({first}); "
                        f"cache: {cache}") from None
