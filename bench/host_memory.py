"""Peak host memory (RSS) of each rank of a short training run, sampled from outside the processes.

    .venv/bin/python bench/host_memory.py [--nproc 2] [--steps 2] [-- key=value ...]

Runs `llm2comp pretrain` (SmolLM2-135M recipe by default, from `llm2comp models pull smollm2-135m`) under
torchrun on a few compression windows and samples every worker's RSS every 50 ms; prints each rank's
peak and the model's size in its training dtype. Use the same command on two commits to compare.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import psutil

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--recipe", default=os.path.join(ROOT, "launch", "recipes", "smollm2-135m-pretrain.yaml"))
    p.add_argument("overrides", nargs="*")
    a = p.parse_args()
    bindir = os.path.dirname(sys.executable)
    model = subprocess.run([os.path.join(bindir, "llm2comp"), "models", "pull", "smollm2-135m"], capture_output=True,
                           text=True, check=True).stdout.strip().splitlines()[-1]
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    with tempfile.TemporaryDirectory() as tmp:
        docs = os.path.join(tmp, "docs.txt")
        with open(docs, "w") as fh:
            fh.write("\n".join(f"Paragraph {i}: " + "the river runs past the old mill and the town. " * 12 for i in range(64)))
        subprocess.run([os.path.join(bindir, "llm2comp"), "prep", "compression", "--input", docs, "--tokenizer", model,
                        "--output", os.path.join(tmp, "shards"), "--max-tokens", "64", "--no-progress"],
                       check=True, capture_output=True, env=env)
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={a.nproc}", "--standalone",
               "-m", "trainer.cli", "pretrain", "--config", a.recipe, f"data={os.path.join(tmp, 'shards')}",
               f"output_dir={os.path.join(tmp, 'run')}", f"max_steps={a.steps}", "train.micro_batch=2",
               "train.progress=false", "train.save_every=1000", *a.overrides]
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        peak: dict[int, int] = {}
        launcher = psutil.Process(proc.pid)
        while proc.poll() is None:
            try:
                for child in launcher.children(recursive=True):
                    try:
                        rank = int(child.environ().get("RANK", "-1"))
                        peak[rank] = max(peak.get(rank, 0), child.memory_info().rss)
                    except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError):
                        pass
            except psutil.NoSuchProcess:
                break
            time.sleep(0.05)
        out = proc.stdout.read()
        if proc.returncode != 0:
            sys.exit(out[-3000:])
    ranks = {r: v / 2**20 for r, v in sorted(peak.items()) if r >= 0}
    result = {"nproc": a.nproc, "peak_rss_mib": ranks, "overrides": a.overrides}
    print(json.dumps(result))
    for r, v in ranks.items():
        print(f"rank {r}: peak RSS {v:,.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
