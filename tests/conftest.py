"""Shared fixtures: real tokenizers available offline, generated corpora, CLI runner."""
from __future__ import annotations

import gzip
import json
import os
import random
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"

WORDS = (
    "the of and to in a is that for it as was with be by on not he this are or his from at which but have an "
    "they you were her she there been one all we their has would when if so no will more what up can out about "
    "river mountain city history music science language computer energy light water garden market bridge king "
    "university railway election church battle island village station museum novel theory species planet"
).split()


def make_text(rng: random.Random, n_words: int) -> str:
    words = [rng.choice(WORDS) for _ in range(n_words)]
    # Sentence punctuation and the odd non-ASCII character make the tokenization realistic.
    for i in range(7, n_words, rng.randint(8, 15)):
        words[i] += rng.choice([".", ",", ";", " –", " café"])
    return " ".join(words).capitalize() + "."


def make_docs(n: int, seed: int = 0, lengths=(2, 30, 120, 400, 1500)) -> list[dict]:
    """Documents of mixed length: some too short for a window, some spanning several windows."""
    rng = random.Random(seed)
    docs = []
    for i in range(n):
        n_words = rng.choice(lengths) + rng.randint(0, 10)
        docs.append({"id": f"doc-{seed}-{i}", "title": "t", "text": make_text(rng, n_words)})
    return docs


def write_jsonl(path: Path, rows: list[dict], gz: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()
    if gz:
        with gzip.open(path, "wb") as fh:
            fh.write(data)
    else:
        path.write_bytes(data)
    return path


@pytest.fixture(scope="session")
def bpe_tokenizer(tmp_path_factory) -> str:
    """A small byte-level BPE trained here, which adds a BOS token like Llama-2's tokenizer does."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600, special_tokens=["<pad>", "<s>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    rng = random.Random(0)
    tok.train_from_iterator((make_text(rng, 60) for _ in range(300)), trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    out = tmp_path_factory.mktemp("bpe_tokenizer")
    fast.save_pretrained(out)
    return str(out)


@pytest.fixture(scope="session")
def smollm2() -> str:
    """The real SmolLM2-135M folder (tokenizer + weights) from `llm2comp models pull`."""
    from data_prep.errors import UserError
    from trainer.model_store import pull

    try:
        return str(pull("smollm2-135m", quiet=True))
    except UserError as e:
        pytest.skip(f"SmolLM2-135M unavailable: {e}")


@pytest.fixture(scope="session")
def smollm2_tokenizer(smollm2) -> str:
    return smollm2


@pytest.fixture
def cli(capsys):
    """Run `llm2comp ARGS...` in-process; returns (exit code, stdout, stderr)."""
    from trainer.cli import main

    def run(*args: str):
        code = main([str(a) for a in args])
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


def shared(*parts: str) -> Path:
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} absent (shared data is optional)")
    return path


def python() -> str:
    return sys.executable


def env_with_root() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env
