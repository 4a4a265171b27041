"""``llm2comp encode --model DIR --input FILE --output FILE.npy``."""
from __future__ import annotations

import json
import os

import numpy as np

from data_prep.errors import UserError


def read_texts(path: str, field: str) -> list[str]:
    texts = []
    try:
        with open(path, encoding="utf-8") as fh:
            for n, line in enumerate(fh, 1):
                line = line.rstrip("\n")
                if not path.endswith(".jsonl"):
                    texts.append(line)
                    continue
                if not line.strip():
                    continue
                try:
                    value = json.loads(line)[field]
                except (ValueError, KeyError, TypeError):
                    raise UserError(f"{path}:{n}: not a JSON object with a {field!r} field") from None
                if not isinstance(value, str):
                    raise UserError(f"{path}:{n}: field {field!r} is not a string")
                texts.append(value)
    except OSError as e:
        raise UserError(f"{path}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise UserError(f"{path}: not valid UTF-8") from None
    return texts


def writable_file(path: str, flag: str) -> str:
    """An output file's path, checked before any work: not a folder; its folder created if missing."""
    if os.path.isdir(path):
        raise UserError(f"{flag} {path}: is a folder; name the file to write")
    parent = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(parent, exist_ok=True)
    except OSError as e:
        raise UserError(f"{flag} {path}: cannot create its folder {parent} ({e.strerror or e})") from None
    if not os.access(parent, os.W_OK):
        raise UserError(f"{flag} {path}: its folder {parent} is not writable")
    return path


def run(args) -> int:
    from .encoder import Encoder

    writable_file(args.output, "--output")
    texts = read_texts(args.input, args.text_field)
    if not texts:
        raise UserError(f"{args.input}: no texts to encode")
    encoder = Encoder.from_pretrained(args.model, compile=args.compile)
    embeddings = encoder.encode(texts, args.batch_size, instruction=args.instruction, show_progress_bar=True)
    tmp = f"{args.output}.tmp{os.getpid()}"
    with open(tmp, "wb") as fh:  # the whole array or nothing: a stopped run leaves no partial .npy
        np.save(fh, embeddings)
    os.replace(tmp, args.output)
    compiled = ", {}/{} blocks compiled".format(*encoder.compiled_blocks) if args.compile else ""
    print(f"{len(texts):,} texts -> {args.output} {embeddings.shape}{compiled}")
    return 0
