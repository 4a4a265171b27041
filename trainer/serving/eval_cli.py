"""``llm2comp eval sts --model M --data DIR --output FILE.json``."""
from __future__ import annotations

import os

from data_prep import jsonio


def run(args) -> int:
    from .evaluation.models import load_encoder
    from .evaluation.sts import evaluate, find_sets, markdown

    sets = find_sets(args.data, args.stsb_split)
    encode = load_encoder(args.model, args.pooling, args.batch_size, args.instruction, progress=args.progress,
                          first_token=args.first_token)
    name = args.model if not args.pooling else f"{args.model} ({args.pooling} pooling)"
    if args.first_token:
        name += f", first token {args.first_token}"
    if args.instruction:
        name += f", instruction {args.instruction!r}"
    report = evaluate(encode, sets, name)
    if args.output:
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        with open(args.output, "w") as fh:
            jsonio.dump(report, fh, indent=2)
    print(markdown(report))
    return 0
