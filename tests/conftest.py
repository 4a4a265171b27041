"""Shared fixtures: real tokenizers available offline, generated corpora, CLI runner."""
from __future__ import annotations

import gzip
import json
import os
import random
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


def pytest_configure(config):
    # Every process of the suite finds the virtual environment's tools first (torchrun, llm2comp, ninja):
    # DeepSpeed JIT-builds its CPU shared-memory op at every init, and the venv's ninja (1.13) and a system
    # ninja (1.11) hash build commands differently, so alternating between them rebuilt it (~30 s) each time.
    bindir = str(Path(sys.executable).parent)
    if os.environ.get("PATH", "").split(os.pathsep)[0] != bindir:
        os.environ["PATH"] = bindir + os.pathsep + os.environ.get("PATH", "")

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


# -- running the CLI under torchrun, and the runs several test modules share (session-scoped: made once) ---
RECIPE = ROOT / "launch" / "recipes" / "tiny-cpu-pretrain.yaml"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(nproc: int, *overrides, wait=True, env_extra=None):
    """`torchrun --nproc-per-node N -m trainer.cli pretrain --config tiny-cpu-pretrain.yaml ...`"""
    env = env_with_root()
    env.update({"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", **(env_extra or {})})
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}", f"--master-port={free_port()}",
           "-m", "trainer.cli", "pretrain", "--config", str(RECIPE),
           f"train.deepspeed={ROOT / 'ds_configs' / 'zero2.json'}", "train.progress=false", *map(str, overrides)]
    if not wait:
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def losses(run_dir: Path) -> dict[int, float]:
    out = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if not rec.get("eval"):  # evaluation rows carry diagnostics, not a training loss
            out[rec["step"]] = rec["loss"]
    return out


def final_weights(run_dir: Path) -> dict:
    from safetensors.torch import load_file

    w = load_file(run_dir / "final" / "adapter" / "adapter_model.safetensors")
    w["memory"] = load_file(run_dir / "final" / "memory.safetensors")["memory"]
    return w


RECIPES = ROOT / "launch" / "recipes"


def failing_cli_cases(tmp_path, cases: list[list[str]], env: dict | None = None) -> list[dict]:
    """Run command lines that must fail through tests/drivers/cli_cases.py (one process for all); returns
    per case {argv, code, stderr}."""
    spec = tmp_path / "cases.json"
    spec.write_text(json.dumps([[str(a) for a in c] for c in cases]))
    out = tmp_path / "cases.out.json"
    r = subprocess.run([sys.executable, str(ROOT / "tests" / "drivers" / "cli_cases.py"), str(spec), str(out)],
                       cwd=ROOT, env=env or cli_env(), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(out.read_text())


def assert_one_line_error(result: dict, needles) -> None:
    err = [line for line in result["stderr"].splitlines() if "error:" in line]
    assert result["code"] == 2 and len(err) == 1 and "Traceback" not in result["stderr"], result
    for n in needles:
        assert n in err[0], (result["argv"], err[0])


def cli_env():
    env = env_with_root()
    env.update(OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    return env


def contrast(nproc, recipe, *overrides, wait=True):
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}", f"--master-port={free_port()}",
           "-m", "trainer.cli", "contrast", "--config", str(recipe), "train.progress=false", *map(str, overrides)]
    if not wait:
        return subprocess.Popen(cmd, cwd=ROOT, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, start_new_session=True)
    return subprocess.run(cmd, cwd=ROOT, env=cli_env(), capture_output=True, text=True, timeout=600)


def prep(*args):
    from trainer.cli import main

    assert main(["prep", *map(str, args), "--workers", "1", "--no-progress"]) == 0


@pytest.fixture(scope="session")
def compression_data(tmp_path_factory, smollm2_tokenizer):
    from trainer.cli import main

    d = tmp_path_factory.mktemp("pretrain_data")
    src = write_jsonl(d / "docs.jsonl", make_docs(60, seed=13, lengths=(40, 90)))
    assert main(["prep", "compression", "--input", str(src), "--tokenizer", smollm2_tokenizer, "--output",
                 str(d / "shards"), "--max-tokens", "64", "--workers", "1", "--no-progress"]) == 0
    return d / "shards"


@pytest.fixture(scope="session")
def sentences(tmp_path_factory, smollm2_tokenizer):
    d = tmp_path_factory.mktemp("sentences")
    docs = make_docs(64, seed=21, lengths=(6, 12, 20))
    (d / "s.txt").write_text("\n".join(x["text"] for x in docs) + "\n")
    prep("sentences", "--input", d / "s.txt", "--tokenizer", smollm2_tokenizer, "--output", d / "shards", "--max-tokens", "32")
    return d / "shards"


@pytest.fixture(scope="session")
def pairs(tmp_path_factory, smollm2_tokenizer):
    d = tmp_path_factory.mktemp("pairs")
    docs = make_docs(96, seed=22, lengths=(5, 9, 14))
    rows = [{"query": docs[i]["text"], "positive": docs[i + 1]["text"], "negatives": [docs[i + 2]["text"]],
             "source": f"src{i % 2}"} for i in range(0, 96, 3)]
    write_jsonl(d / "p.jsonl", rows)
    prep("pairs", "--input", d / "p.jsonl", "--tokenizer", smollm2_tokenizer, "--output", d / "shards",
         "--max-tokens", "32", "--instruction", "Find the continuation")
    return d / "shards"


@pytest.fixture(scope="session")
def stage1_run(tmp_path_factory, smollm2_tokenizer):
    d = tmp_path_factory.mktemp("stage1")
    src = write_jsonl(d / "docs.jsonl", make_docs(24, seed=5, lengths=(40, 80)))
    prep("compression", "--input", src, "--tokenizer", smollm2_tokenizer, "--output", d / "shards", "--max-tokens", "64")
    r = launch(1, f"data={d / 'shards'}", f"output_dir={d / 'run'}", "max_steps=3", "train.micro_batch=4")
    assert r.returncode == 0, r.stdout[-3000:]
    return d / "run"


@pytest.fixture(scope="session")
def ucl_run(tmp_path_factory, sentences, stage1_run):
    d = tmp_path_factory.mktemp("ucl_run")
    r = contrast(1, RECIPES / "tiny-cpu-ucl.yaml", f"data={sentences}", f"init_from={stage1_run}",
                 f"output_dir={d}", "max_steps=3")
    assert r.returncode == 0, r.stdout[-3000:]
    return d


