#!/usr/bin/env bash
# `make demo`: the pipeline on its default model (SmolLM2-135M) and a small real sample.
# Today it runs the offline stage (tokenization into Arrow shards) for all three shard kinds;
# training, export and evaluation join it as they land.
set -euo pipefail
DATA=${1:-../shared/data}
OUT=${2:-demo_out}
LLM2COMP=${LLM2COMP:-.venv/bin/llm2comp}
MODEL=$($LLM2COMP models pull smollm2-135m 2>/dev/null | tail -n 1)

need() {
  if [ ! -e "$DATA/$1" ]; then
    echo "demo: $DATA/$1 not found. The demo reads the shared data set (Wikipedia paragraphs and"
    echo "sentences, SNLI); point DATA at a copy of it: make demo DATA=/path/to/data" >&2
    exit 2
  fi
}
need corpus/wiki_paragraphs.valid.jsonl.gz
need corpus/wiki_sentences.txt.gz
need nli/snli_triplets.jsonl
echo "demo: data from $DATA, model $MODEL, output in $OUT"

mkdir -p "$OUT/samples"
# A small sample keeps the demo to seconds; the commands are the ones used on full corpora.
python3 - "$DATA" "$OUT/samples" <<'PY'
import gzip, itertools, sys
data, out = sys.argv[1], sys.argv[2]
with gzip.open(f"{data}/corpus/wiki_paragraphs.valid.jsonl.gz", "rb") as src, gzip.open(f"{out}/paragraphs.jsonl.gz", "wb") as dst:
    dst.writelines(itertools.islice(src, 4000))
with gzip.open(f"{data}/corpus/wiki_sentences.txt.gz", "rb") as src, gzip.open(f"{out}/sentences.txt.gz", "wb") as dst:
    dst.writelines(itertools.islice(src, 20000))
PY

$LLM2COMP prep compression --input "$OUT/samples/paragraphs.jsonl.gz" --tokenizer "$MODEL" --output "$OUT/data/compression" --overwrite
$LLM2COMP prep sentences --input "$OUT/samples/sentences.txt.gz" --tokenizer "$MODEL" --output "$OUT/data/sentences" --overwrite
$LLM2COMP prep pairs --input "$DATA/nli/snli_triplets.jsonl" --tokenizer "$MODEL" --output "$OUT/data/pairs" --overwrite \
  --instruction "Given a premise, retrieve a hypothesis that is entailed by the premise"

python3 - "$OUT/data" <<'PY'
import json, sys
print("\n| shards | rows | tokens | skipped |\n|---|---:|---:|---|")
for kind in ("compression", "sentences", "pairs"):
    m = json.load(open(f"{sys.argv[1]}/{kind}/manifest.json"))
    t = m["totals"]
    print(f"| {kind} | {t['rows']:,} | {t['tokens']:,} | {sum(m['skipped'].values()):,} |")
PY
