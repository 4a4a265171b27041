"""Loading a Hugging Face tokenizer offline and describing it: identity hash and special-token handling.

The trainer compares the hash of its model's tokenizer with the one in a shard manifest, so the hash
covers exactly what decides token ids: the vocabulary (added tokens included), the special tokens and
what ``add_special_tokens=True`` puts around a text.
"""
from __future__ import annotations

import hashlib
import json
import os

from .errors import PrepError

_PROBE = "a"


def load_tokenizer(path: str):
    """Load a tokenizer from a local directory or a Hub id's cached folder (no network), or fail with one line
    naming it."""
    from .hub import local_folder

    path = local_folder(path, "tokenizer")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # "sequence longer than model max length" is expected here
    try:
        tok = AutoTokenizer.from_pretrained(path)
    except Exception as e:  # transformers raises many types for an unreadable folder
        # transformers' messages run over several lines: one line of all of it, not its first line cut short
        said = " ".join(str(e).split()) or type(e).__name__
        raise PrepError(f"tokenizer {path}: cannot load: {said[:400]}") from None
    return tok


def special_wrapping(tok) -> tuple[list[int], list[int]]:
    """Token ids that ``add_special_tokens=True`` puts before and after a text (e.g. BOS, EOS)."""
    plain = tok(_PROBE, add_special_tokens=False)["input_ids"]
    full = tok(_PROBE, add_special_tokens=True)["input_ids"]
    for i in range(len(full) - len(plain) + 1):
        if full[i : i + len(plain)] == plain:
            return list(full[:i]), list(full[i + len(plain) :])
    raise PrepError(f"tokenizer {tok.name_or_path}: cannot tell which special tokens it adds around a text")


def tokenizer_identity(tok, name_or_path: str | None = None) -> dict:
    prefix, suffix = special_wrapping(tok)
    specials = {
        "bos_token": tok.bos_token,
        "eos_token": tok.eos_token,
        "pad_token": tok.pad_token,
        "unk_token": tok.unk_token,
        "bos_token_id": tok.bos_token_id,
        "eos_token_id": tok.eos_token_id,
        "pad_token_id": tok.pad_token_id,
        "all_special_tokens": sorted(tok.all_special_tokens),
        "prefix_ids": prefix,
        "suffix_ids": suffix,
    }
    vocab = sorted(tok.get_vocab().items())
    digest = hashlib.sha256(json.dumps({"vocab": vocab, "specials": specials}, sort_keys=True).encode()).hexdigest()
    return {
        "name_or_path": name_or_path or tok.name_or_path,
        "class": type(tok).__name__,
        "vocab_size": len(vocab),
        "hash": f"sha256:{digest}",
        # The trainer rebuilds the teacher input as prefix_ids + context + continuation.
        "adds_bos": bool(prefix) and prefix[0] == tok.bos_token_id,
        **specials,
    }
