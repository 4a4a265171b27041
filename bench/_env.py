"""Shared by the benchmarks: the device, commit and date a measurement was taken on."""
from __future__ import annotations

import datetime
import os
import subprocess

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def env_info(device: str) -> dict:
    import torch

    git = lambda *c: subprocess.run(["git", *c], cwd=REPO, capture_output=True, text=True).stdout.strip()
    if device.startswith("cuda"):
        name = torch.cuda.get_device_name(device)
    else:
        name = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "cpu") \
            if os.path.exists("/proc/cpuinfo") else "cpu"
        name += f" ({os.cpu_count()} cpus, torch threads {torch.get_num_threads()})"
    commit = git("rev-parse", "--short", "HEAD") + (" (dirty)" if git("status", "--porcelain") else "")
    return {"device_name": name, "commit": commit, "torch": torch.__version__,
            "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}
