"""Which fixed first token suits a model whose tokenizer adds none (``model.first_token``)?

The causal LM D, unadapted, reads held-out Wikipedia paragraphs after each candidate first token (or after
nothing); the token after which the LM predicts text best is the one its pretraining documents start
after. Prints the mean NLL per token over the same positions (text tokens 2..L, which every candidate
predicts) and the attention the text's tokens give the first position (the sink), in the last layer.

    python bench/first_token.py --model $(llm2comp models pull smollm2-135m) \\
        --data ../shared/data/corpus/wiki_paragraphs.valid.jsonl.gz --texts 200 --tokens 128
"""
from __future__ import annotations

import argparse
import gzip
import itertools
import json
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True, help="jsonl(.gz) with a text field")
    ap.add_argument("--texts", type=int, default=200)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--candidates", default="none,<|endoftext|>,<|im_start|>,<|im_end|>")
    args = ap.parse_args()

    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32, attn_implementation="eager").eval()
    opener = gzip.open if args.data.endswith(".gz") else open
    with opener(args.data, "rt") as fh:
        texts = [json.loads(line)["text"] for line in itertools.islice(fh, args.texts)]
    ids = [t[: args.tokens] for t in tok(texts, add_special_tokens=False)["input_ids"]]
    print(f"{args.model}: {len(ids)} paragraphs, {sum(map(len, ids))} tokens (first {args.tokens} of each)")
    print("| first token | NLL per token (text tokens 2..L) | last-layer attention on position 0 |")
    print("|---|---:|---:|")
    for cand in args.candidates.split(","):
        prefix = [] if cand == "none" else [tok.convert_tokens_to_ids(cand)]
        t0 = time.monotonic()
        nll = n = 0.0
        sink = 0.0
        with torch.no_grad():
            for row in ids:
                x = torch.tensor([prefix + row])
                out = model(input_ids=x, output_attentions=True)
                logp = torch.log_softmax(out.logits[0].float(), -1)
                p = len(prefix)
                # Position p + j predicts text token j + 1: score text tokens 2..L (index 1..L-1).
                pred = logp[p : p + len(row) - 1]
                nll += float(-pred.gather(-1, torch.tensor(row[1:])[:, None]).sum())
                n += len(row) - 1
                sink += float(out.attentions[-1][0, :, p + 1 :, 0].mean())  # text rows' weight on position 0
        print(f"| {cand} | {nll / n:.4f} | {sink / len(ids):.3f} |  ({time.monotonic() - t0:.0f} s)")


if __name__ == "__main__":
    main()
