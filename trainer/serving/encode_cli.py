"""``llm2comp encode --model DIR --input FILE --output FILE.npy``."""
from __future__ import annotations

import json

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


def run(args) -> int:
    from .encoder import Encoder

    texts = read_texts(args.input, args.text_field)
    encoder = Encoder.from_pretrained(args.model, compile=args.compile)
    embeddings = encoder.encode(texts, args.batch_size, instruction=args.instruction, show_progress_bar=True)
    np.save(args.output, embeddings)
    compiled = ", {}/{} blocks compiled".format(*encoder.compiled_blocks) if args.compile else ""
    print(f"{len(texts):,} texts -> {args.output} {embeddings.shape}{compiled}")
    return 0
