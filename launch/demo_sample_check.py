"""How far the demo's STS-B sample lies from the whole test set, for the base model and every stage's export.

    python launch/demo_sample_check.py [--data ../shared/data] [--out demo_out] [--pairs 300]

Scores the base model (mean pooling) and `OUT/export/stage{1,2,3}` on all 1,379 STS-B test pairs and on the
demo's fixed stratified sample (`launch/demo_data.py: sts_sample`), and, for comparison, on the first pairs
(the rule the demo used before). Prints one markdown table: Spearman x100 on each, and the sample's distance
from the whole set. Run it after `make demo` (it reads the demo's exports).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from demo_data import sts_sample  # noqa: E402


def spearman(llm2comp: str, model: str, data: str, *extra: str) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "r.json")
        subprocess.run([llm2comp, "eval", "sts", "--model", model, "--data", data, "--output", out, "--no-progress",
                        *extra], check=True, stdout=subprocess.DEVNULL)
        return json.load(open(out))["results"]["STSBenchmark"]["spearman"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=os.path.join(ROOT, "..", "shared", "data"))
    ap.add_argument("--out", default=os.path.join(ROOT, "demo_out"))
    ap.add_argument("--pairs", type=int, default=300)
    ap.add_argument("--llm2comp", default=os.path.join(os.path.dirname(sys.executable), "llm2comp"))
    args = ap.parse_args()
    with open(os.path.join(args.data, "sts", "stsbenchmark", "sts-test.csv"), encoding="utf-8") as fh:
        lines = fh.readlines()
    sets = {"all": lines, "sample": sts_sample(lines, args.pairs), "first": lines[: args.pairs]}
    dirs = {}
    for name, rows in sets.items():
        dirs[name] = os.path.join(args.out, "sample-check", name)
        os.makedirs(os.path.join(dirs[name], "stsbenchmark"), exist_ok=True)
        with open(os.path.join(dirs[name], "stsbenchmark", "sts-test.csv"), "w", encoding="utf-8") as fh:
            fh.writelines(rows)
    model = subprocess.run([args.llm2comp, "models", "pull", "smollm2-135m"], check=True, capture_output=True,
                           text=True).stdout.strip().splitlines()[-1]
    encoders = [("SmolLM2-135M, mean pooling", model, ["--pooling", "mean"])]
    encoders += [(f"stage {s} export", os.path.join(args.out, "export", f"stage{s}"), []) for s in (1, 2, 3)]
    print(f"| model | all {len(lines)} pairs | stratified sample of {args.pairs} | sample − all | "
          f"first {args.pairs} | first − all |\n|---|---:|---:|---:|---:|---:|")
    worst = 0.0
    for label, path, extra in encoders:
        s = {name: spearman(args.llm2comp, path, d, *extra) for name, d in dirs.items()}
        worst = max(worst, abs(s["sample"] - s["all"]))
        print(f"| {label} | {s['all']:.2f} | {s['sample']:.2f} | {s['sample'] - s['all']:+.2f} | {s['first']:.2f} | "
              f"{s['first'] - s['all']:+.2f} |", flush=True)
    print(f"\nlargest |sample − all|: {worst:.2f} points")
    return 0


if __name__ == "__main__":
    sys.exit(main())
