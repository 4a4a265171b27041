"""What the machine runs, against what the project needs: the version floors of setup.py, the
requirements of carried wheels, the GPU. The first part of the GPU session (bench/session.py): a figure
measured on a transformers below the floor describes that transformers, so the session says so first.

    python bench/versions.py [--wheels .whl]      # prints the JSON
"""
from __future__ import annotations

import argparse
import ast
import glob
import json
import os
import sys
import zipfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The packages the session imports; their floors come from setup.py's install_requires.
CHECKED = ("torch", "transformers", "peft", "deepspeed", "tokenizers", "safetensors", "numpy", "pyarrow")


def floors(setup_py: str = os.path.join(REPO, "setup.py")) -> dict[str, str]:
    """{name: specifier} from setup.py's ``install_requires`` (read, not executed)."""
    from packaging.requirements import Requirement

    tree = ast.parse(open(setup_py).read())
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg == "install_requires":
            return {(r := Requirement(ast.literal_eval(e))).name.lower(): str(r.specifier) for e in node.value.elts}
    raise ValueError(f"{setup_py}: no install_requires")


def installed(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def check_floors(names=CHECKED) -> dict[str, dict]:
    """Per package: installed version, the floor, and ok / below floor / missing."""
    from packaging.specifiers import SpecifierSet
    from packaging.version import Version

    want, out = floors(), {}
    for name in names:
        have, spec = installed(name), want.get(name, "")
        if have is None:
            status = "missing"
        else:  # a local build tag (2.11.0+cu130) is the release it builds
            status = "ok" if Version(Version(have).base_version) in SpecifierSet(spec) else "below floor"
        out[name] = {"installed": have, "required": spec, "status": status}
    return out


def wheel_requirements(path: str) -> list[str]:
    """A wheel's Requires-Dist lines (without the extras' ones)."""
    with zipfile.ZipFile(path) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        lines = z.read(meta).decode().splitlines()
    return [l.split(":", 1)[1].strip() for l in lines if l.startswith("Requires-Dist:") and "extra ==" not in l]


def check_carried(wheel_dir: str) -> dict:
    """Every requirement of every carried wheel, against what is importable now (carried or already there)."""
    from packaging.requirements import Requirement
    from packaging.version import Version

    unmet = []
    wheels = sorted(glob.glob(os.path.join(wheel_dir, "*.whl")))
    for w in wheels:
        for line in wheel_requirements(w):
            r = Requirement(line)
            if r.marker is not None and not r.marker.evaluate():
                continue
            have = installed(r.name)
            if have is None or (r.specifier and Version(Version(have).base_version) not in r.specifier):
                unmet.append(f"{os.path.basename(w).split('-')[0]} needs {line} (found {have or 'none'})")
    return {"wheels": [os.path.basename(w) for w in wheels], "unmet": unmet}


def gpu() -> dict:
    import torch

    if not torch.cuda.is_available():
        return {"available": False}
    p = torch.cuda.get_device_properties(0)
    return {"available": True, "name": p.name, "capability": f"{p.major}.{p.minor}", "memory_gib": p.total_memory / 2**30,
            "cuda": torch.version.cuda, "count": torch.cuda.device_count()}


def report(wheel_dir: str | None = None) -> dict:
    out = {"python": sys.version.split()[0], "floors": check_floors(), "gpu": gpu(),
           "flash_attn": installed("flash-attn") or installed("flash_attn")}
    if wheel_dir and glob.glob(os.path.join(wheel_dir, "*.whl")):
        out["carried"] = check_carried(wheel_dir)
    out["below_floor"] = [f"{n} {v['installed']} (needs {v['required']})" for n, v in out["floors"].items()
                          if v["status"] == "below floor"]
    out["missing"] = [n for n, v in out["floors"].items() if v["status"] == "missing"]
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--wheels", default=os.path.join(REPO, ".whl"))
    print(json.dumps(report(p.parse_args(argv).wheels), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
