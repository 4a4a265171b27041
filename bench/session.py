"""The prepared GPU session: every figure one lent GPU can give us, in one command that fits its limits.

    python bench/session.py --out DIR [--budget-s 540]      # on the GPU machine (bench/gpu_session.sh runs it)
    python bench/session.py --out DIR --smoke                # the same parts and packaging, tiny shapes, CPU

Parts, in order; each runs in its own process, builds its models once, and writes what it measured as soon as
it measured it, so a part that crashes or runs out of time loses only itself:

1. ``versions`` (bench/versions.py): the installed versions against setup.py's floors, the carried wheels'
   requirements, the GPU. Checked first: a figure measured below a floor describes that version.
2. ``checks`` (bench/gpu_checks.py): project vs reference losses in bf16, bidirectionality under every SDPA
   backend, packing, the compiled dropout mask (qwen2-1.5b shape).
3. ``pretrain`` (bench/train_step.py): stage 1 at the llama2-7b shape (micro-batch 4, windows <= 512):
   the reference-style path (checkpointed), then the project's without gradient checkpointing (the 7B
   recipes' setting), compiled (``train.compile``) and eager, and with checkpointing, then the real DeepSpeed
   ZeRO-2 engine (bf16, fp32 gradient accumulation).
4. ``scl``: stage 3 at the llama2-7b shape with recipe-like lengths (queries ~40 tokens, passages lognormal
   up to 512): one rank's share of the recipe's global batch (128 queries) in gradient-cache chunks of 16
   and 32, the chunks of 32 compiled and eager; chunks in batch order against chunks sorted by length; the whole global batch of 1,024 on one
   GPU; the DeepSpeed ZeRO-2 engine against the plain one.
5. ``encode``: texts/s of the encoder, length-sorted, packed and in arbitrary order.

Output, within what a lent machine returns (at most 8 files): ``DIR/session.json`` (every part's results,
rewritten after each part) and ``DIR/session.log`` (everything the parts printed). A part is skipped, with
the reason, when the time left is below its estimate, or when what it needs is missing.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile
import time

BENCH = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH)

# name -> (estimated seconds on an H100/H200, smoke arguments, full arguments). The estimates are for the
# budget check: a part starts only when that much time is left.
PARTS = {
    "checks": (60, ["gpu_checks.py", "--smoke"], ["gpu_checks.py", "--model-config", "qwen2-1.5b"]),
    "pretrain": (
        160,  # of which the compiled variant's first compilation, about 40 s
        ["train_step.py", "--stage", "pretrain", "--device", "cpu", "--model-config", "tiny", "--seq", "48",
         "--steps", "2", "--warmup", "1", "--micro-batch", "2", "--baseline", "--gradient-checkpointing",
         "--variants", "gradient_checkpointing=0", "gradient_checkpointing=0,compile=1", "gradient_checkpointing=1",
         "deepspeed=1,gradient_checkpointing=0"],
        ["train_step.py", "--stage", "pretrain", "--model-config", "llama2-7b", "--seq", "512", "--micro-batch", "4",
         "--steps", "10", "--warmup", "2", "--baseline", "--gradient-checkpointing",
         "--variants", "gradient_checkpointing=0", "gradient_checkpointing=0,compile=1", "gradient_checkpointing=1",
         "deepspeed=1,gradient_checkpointing=0"]),
    "scl": (
        260,
        ["train_step.py", "--stage", "scl", "--device", "cpu", "--model-config", "tiny", "--seq", "96", "--steps", "1",
         "--warmup", "1", "--micro-batch", "4", "--gradient-checkpointing",
         "--variants", "chunk=4", "chunk=8", "chunk=4,chunk_by_length=0", "micro_batch=8,chunk=4", "chunk=4,deepspeed=1"],
        # (its compiled variant is the pretrain part's in the rehearsal: a cold compilation of the contrastive
        # graphs costs minutes of CI; compiled gradient caching with checkpointing is tests/test_compile.py's)
        ["train_step.py", "--stage", "scl", "--model-config", "llama2-7b", "--seq", "512", "--steps", "2", "--warmup", "1",
         "--micro-batch", "128", "--gradient-checkpointing",
         "--variants", "chunk=32", "chunk=32,compile=1", "chunk=16", "chunk=32,chunk_by_length=0",
         "micro_batch=1024,chunk=32", "chunk=32,deepspeed=1"]),
    "encode": (
        60,
        ["train_step.py", "--stage", "encode", "--device", "cpu", "--model-config", "tiny", "--seq", "48", "--steps", "2",
         "--warmup", "1", "--micro-batch", "8", "--repeats", "1", "--packing", "256"],
        ["train_step.py", "--stage", "encode", "--model-config", "llama2-7b", "--micro-batch", "64", "--steps", "8",
         "--repeats", "2", "--packing", "8192"]),
}
DEEPSPEED_VARIANTS = "deepspeed=1"


class Session:
    """session.json and session.log under ``out``; the JSON rewritten (atomically) after every part."""

    def __init__(self, out: str, smoke: bool, budget_s: float):
        os.makedirs(out, exist_ok=True)
        self.out, self.t0, self.budget = out, time.monotonic(), budget_s
        self.json_path, self.log_path = os.path.join(out, "session.json"), os.path.join(out, "session.log")
        self.result = {"smoke": smoke, "budget_s": budget_s, "parts": {}}
        open(self.log_path, "w").close()

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def log(self, line: str) -> None:
        line = f"== [{self.elapsed():.0f}s] {line}"
        print(line, flush=True)
        with open(self.log_path, "a") as fh:
            fh.write(line + "\n")

    def write(self) -> None:
        self.result["elapsed_s"] = round(self.elapsed(), 1)
        with open(self.json_path + ".tmp", "w") as fh:
            json.dump(self.result, fh, indent=1)
        os.replace(self.json_path + ".tmp", self.json_path)

    def record(self, name: str, entry: dict) -> None:
        self.result["parts"][name] = entry
        self.write()

    def run_part(self, name: str, argv: list[str], estimate: float) -> None:
        left = self.budget - self.elapsed()
        if left < estimate:
            self.log(f"{name}: skipped, {left:.0f}s left of the budget and it needs about {estimate:.0f}s")
            self.record(name, {"status": "skipped", "reason": f"{left:.0f}s left, needs ~{estimate:.0f}s"})
            return
        with tempfile.TemporaryDirectory() as tmp:
            out_json = os.path.join(tmp, f"{name}.json")
            cmd = [sys.executable, os.path.join(BENCH, argv[0]), *argv[1:]]
            cmd += ["--out", tmp] if argv[0] == "gpu_checks.py" else ["--json", out_json]
            self.log(f"{name}: {' '.join(argv)}")
            t = time.monotonic()
            with open(self.log_path, "a") as log:
                try:
                    proc = subprocess.run(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, timeout=left)
                    status = "ok" if proc.returncode == 0 else f"exit {proc.returncode}"
                except subprocess.TimeoutExpired:
                    status = f"stopped at the budget ({left:.0f}s)"
            found = glob.glob(os.path.join(tmp, "*.json"))
            entry = {"status": status, "seconds": round(time.monotonic() - t, 1)}
            if found:
                entry["result"] = json.load(open(found[0]))  # whatever it measured, also when it failed
            self.log(f"{name}: {status} in {entry['seconds']:.0f}s" + ("" if found else ", nothing measured"))
            self.record(name, entry)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=os.environ.get("OUT") or os.path.join(REPO, "bench", "out", "gpu_session"))
    p.add_argument("--smoke", action="store_true", help="the CPU rehearsal: tiny shapes, the same parts and files")
    p.add_argument("--budget-s", type=float, default=None,
                   help="stop starting parts past this (default 540: one device call is 600 s; --smoke: 840, the "
                   "test's limit, as a cold torch.compile on a loaded CI machine takes minutes)")
    p.add_argument("--parts", default=",".join(PARTS), help=f"a subset of {','.join(PARTS)}")
    p.add_argument("--wheels", default=os.path.join(REPO, ".whl"), help="the carried wheels (their requirements are checked)")
    a = p.parse_args(argv)
    a.budget_s = a.budget_s if a.budget_s is not None else (840 if a.smoke else 540)
    sys.path.insert(0, BENCH)
    from versions import report

    session = Session(a.out, a.smoke, a.budget_s)
    versions = report(a.wheels)
    session.record("versions", {"status": "ok", "result": versions})
    for what in versions["below_floor"]:
        session.log(f"versions: {what}: below the floor, so figures describe this version")
    for what in versions.get("carried", {}).get("unmet", []):
        session.log(f"versions: carried wheels: {what}")
    if not a.smoke and not versions["gpu"]["available"]:
        session.log("no GPU: nothing to measure here (use --smoke for the CPU rehearsal)")
        return 1
    deepspeed_ok = versions["floors"]["deepspeed"]["installed"] is not None
    failed = False
    for name in a.parts.split(","):
        estimate, smoke_argv, full_argv = PARTS[name]
        argv = list(smoke_argv if a.smoke else full_argv)
        if not deepspeed_ok and DEEPSPEED_VARIANTS in " ".join(argv):
            argv = [x for x in argv if DEEPSPEED_VARIANTS not in x]
            session.log(f"{name}: without its DeepSpeed variant: deepspeed is not importable here")
        session.run_part(name, argv, estimate if not a.smoke else 0)
        failed |= session.result["parts"][name]["status"] != "ok"
    session.log(f"done in {session.elapsed():.0f}s; {a.out}: session.json, session.log")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
