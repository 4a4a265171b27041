"""Shared by the benchmarks: the device, commit and date a measurement was taken on."""
from __future__ import annotations

import datetime
import os
import subprocess

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def env_info(device: str) -> dict:
    import torch

    if device.startswith("cuda"):
        name = torch.cuda.get_device_name(device)
    else:
        name = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "cpu") \
            if os.path.exists("/proc/cpuinfo") else "cpu"
        name += f" ({os.cpu_count()} cpus, torch threads {torch.get_num_threads()})"
    commit = source_commit()
    return {"device_name": name, "commit": commit, "torch": torch.__version__,
            "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}


def source_commit() -> str:
    """The commit measured: ``git rev-parse`` (+ " (dirty)"), else ``$LLM2COMP_COMMIT`` (a copy of the tree
    without .git or without git, as on a lent GPU machine: the session is started with it set), else "unknown"."""
    import shutil

    def git(*args: str) -> str:
        try:
            r = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.SubprocessError):
            return ""
        return r.stdout.strip() if r.returncode == 0 else ""

    if shutil.which("git") and os.path.isdir(os.path.join(REPO, ".git")):
        head = git("rev-parse", "--short", "HEAD")
        if head:
            return head + (" (dirty)" if git("status", "--porcelain") else "")
    return os.environ.get("LLM2COMP_COMMIT", "unknown")
