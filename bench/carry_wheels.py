"""Build the wheels a lent GPU machine lacks into ``.whl/`` (carried with ``run(carry=[".whl"])``; installed
there into a target folder by bench/gpu_session.sh): the project's transformers, peft and deepspeed at the
versions constraints.txt pins, and the pure-Python (or cp312 manylinux) packages they need that the
machine's image does not hold. Checks every carried wheel's requirements against the carried set and the
image's package list, and the total against what one call carries (64 MiB with the working tree).

    .venv/bin/python bench/carry_wheels.py [--out .whl] [--python 3.12]
"""
from __future__ import annotations

import argparse
import glob
import os
import re
import shutil
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from versions import REPO, wheel_requirements  # noqa: E402

CARRY_LIMIT = 64 * 2**20
# What to carry: ours at their pins, then what those need beyond the image (deepspeed: pydantic, hjson;
# transformers: a newer regex; pydantic: a newer typing_extensions).
CARRIED = ["transformers", "peft", "deepspeed", "pydantic", "pydantic_core", "annotated-types", "typing-inspection",
           "typing_extensions", "hjson", "regex"]
BUILT_HERE = {"deepspeed"}  # an sdist on PyPI: built here as a pure-Python wheel (DS_BUILD_OPS=0, ops JIT on use)
# The device image's packages (the device tool's KINDS.md, read 2026-11-17), by normalised name.
IMAGE = set("""absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build
certifi charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core
cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock flatbuffers
flax fonttools formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize
hypothesis idna imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib
kiwisolver lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml markdown markdown-it-py
markupsafe matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind
narwhals networkx ninja numba numba-cuda numpy numpyro nvidia-ml-py onnx opencv-python-headless optax opt-einsum
orbax-checkpoint packaging pandas pathspec patsy peft pillow pip pluggy portalocker prometheus-client propcache
protobuf psutil pyarrow pybind11 py-cpuinfo pygments pyparsing pyproject-hooks pytest python-dateutil pytorch-lightning
pyyaml regex requests rich sacrebleu safetensors scikit-learn scipy seaborn sentencepiece sentence-transformers
setuptools shellingham simplejson six sortedcontainers statsmodels sympy tabulate tensorboard threadpoolctl tiktoken
timm tokenizers toolz torch torchaudio torchvision tqdm transformers triton typer typing-extensions typing-inspect
urllib3 werkzeug wheel wrapt xarray xxhash yarl zipp""".split())


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(path: str = os.path.join(REPO, "constraints.txt")) -> dict[str, str]:
    out = {}
    for line in open(path):
        name, sep, version = line.strip().partition("==")
        if sep:
            out[norm(name)] = version
    return out


def tree_bytes() -> int:
    """What travels besides the carried paths: tracked and untracked-but-not-ignored files."""
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout.split("\0")
    return sum(os.path.getsize(os.path.join(REPO, f)) for f in files if f and os.path.isfile(os.path.join(REPO, f)))


def unmet(wheel_dir: str) -> list[str]:
    """Requirements of the carried wheels that neither the carried set nor the image holds."""
    from packaging.requirements import Requirement

    have = {norm(os.path.basename(w).split("-")[0]) for w in glob.glob(os.path.join(wheel_dir, "*.whl"))} | IMAGE
    out = []
    for w in sorted(glob.glob(os.path.join(wheel_dir, "*.whl"))):
        for line in wheel_requirements(w):
            r = Requirement(line)
            env = {"python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux",
                   "platform_system": "Linux", "platform_machine": "x86_64", "implementation_name": "cpython"}
            if r.marker is not None and not r.marker.evaluate(env):
                continue
            if norm(r.name) not in have:
                out.append(f"{os.path.basename(w)} needs {line}")
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=os.path.join(REPO, ".whl"))
    p.add_argument("--python", default="3.12", help="the device's Python (KINDS.md: 3.12)")
    a = p.parse_args(argv)
    versions = pins()
    shutil.rmtree(a.out, ignore_errors=True)
    os.makedirs(a.out)
    pip = [sys.executable, "-m", "pip"]
    wanted = [f"{n}=={versions[norm(n)]}" for n in CARRIED]
    binary = [w for w in wanted if norm(w.split("==")[0]) not in BUILT_HERE]
    plat = [f"--platform=manylinux_2_{n}_x86_64" for n in (28, 27, 17)] + ["--platform=manylinux2014_x86_64"]
    subprocess.run([*pip, "download", "-q", "--no-deps", "--only-binary=:all:", f"--python-version={a.python}",
                    "--implementation=cp", *plat, "-d", a.out, *binary], check=True)
    built = [w for w in wanted if norm(w.split("==")[0]) in BUILT_HERE]
    subprocess.run([*pip, "wheel", "-q", "--no-deps", "-w", a.out, *built], check=True,
                   env={**os.environ, "DS_BUILD_OPS": "0"})
    wheels = sorted(glob.glob(os.path.join(a.out, "*.whl")))
    size, tree = sum(os.path.getsize(w) for w in wheels), tree_bytes()
    for w in wheels:
        print(f"{os.path.getsize(w) / 2**20:7.2f} MiB  {os.path.basename(w)}")
    print(f"{size / 2**20:7.2f} MiB wheels + {tree / 2**20:.2f} MiB working tree = {(size + tree) / 2**20:.2f} MiB "
          f"of the {CARRY_LIMIT / 2**20:.0f} MiB a call carries")
    problems = unmet(a.out)
    for line in problems:
        print(f"unmet: {line}")
    if size + tree > CARRY_LIMIT:
        print("too large for one call")
    return 1 if problems or size + tree > CARRY_LIMIT else 0


if __name__ == "__main__":
    sys.exit(main())
