"""A tiny Gemma 2 (no SDPA support, soft-capped attention and logits, sliding-window layers) through the
whole pipeline on `attention: auto`: stage 1 -> stage 2 with attention dropout on -> stage 3 -> export ->
encode -> SentenceTransformer load. Before, `auto` resolved to SDPA, which Gemma 2 refuses at load."""
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, make_docs, write_jsonl
from conftest import RECIPES, cli_env, contrast, launch, prep


@pytest.fixture(scope="module")
def gemma2_dir(tmp_path_factory, smollm2_tokenizer):
    """A random tiny Gemma 2 with the SmolLM2 tokenizer (so the shared test shards fit it)."""
    import transformers

    d = tmp_path_factory.mktemp("tiny_gemma2")
    tok = transformers.AutoTokenizer.from_pretrained(smollm2_tokenizer)
    transformers.Gemma2Config(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=16, sliding_window=8,  # shorter than the texts
        attn_logit_softcapping=50.0, final_logit_softcapping=30.0, max_position_embeddings=512,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    ).save_pretrained(d)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(f"{smollm2_tokenizer}/{name}", d / name)
    return d


def gemma(*overrides):
    return ["model.config_overrides={}", "model.attention=auto", *overrides]


def effective(run):
    return json.loads((run / "effective_settings.json").read_text())


def test_gemma2_through_every_stage_on_auto_attention(tmp_path, gemma2_dir, sentences, pairs, smollm2_tokenizer):
    src = write_jsonl(tmp_path / "docs.jsonl", make_docs(16, seed=9, lengths=(40, 80)))
    prep("compression", "--input", src, "--tokenizer", smollm2_tokenizer, "--output", tmp_path / "comp", "--max-tokens", "64")

    s1 = launch(1, *gemma(f"model.path={gemma2_dir}", f"data={tmp_path / 'comp'}", f"output_dir={tmp_path / 's1'}",
                          "max_steps=2"))
    assert s1.returncode == 0, s1.stdout[-3000:]
    assert effective(tmp_path / "s1")["attention_implementation"] == "eager"

    s2 = contrast(1, RECIPES / "tiny-cpu-ucl.yaml", *gemma(f"data={sentences}", f"init_from={tmp_path / 's1'}",
                                                          f"output_dir={tmp_path / 's2'}", "max_steps=2",
                                                          "contrast.attention_dropout=0.2", "model.lora.dropout=0.05"))
    assert s2.returncode == 0, s2.stdout[-3000:]
    eff = effective(tmp_path / "s2")
    assert eff["model_type"] == "gemma2" and eff["attention_implementation"] == "llm2comp_row_dropout_eager"
    assert eff["attention_dropout"] == 0.2 and eff["attention_dropout_row_seeded"] and eff["lora"]["dropout_row_seeded"]

    s3 = contrast(1, RECIPES / "tiny-cpu-scl.yaml", *gemma(f"data={pairs}", f"init_from={tmp_path / 's2'}",
                                                          f"output_dir={tmp_path / 's3'}", "max_steps=2",
                                                          "contrast.attention_dropout=0.1", "chunk=2"))
    assert s3.returncode == 0, s3.stdout[-3000:]

    from trainer.cli import main
    from trainer.serving.encoder import Encoder

    assert main(["export", "--run", str(tmp_path / "s3"), "--output", str(tmp_path / "exp")]) == 0
    config = json.loads((tmp_path / "exp" / "llm2comp_config.json").read_text())
    assert config["trained_attention"] == "eager"
    assert [s["stage"] for s in config["lineage"]["stages"]] == ["pretrain", "ucl", "scl"]
    texts = [d["text"] for d in make_docs(5, seed=3, lengths=(4, 20))]
    enc = Encoder.from_pretrained(str(tmp_path / "exp"))
    assert enc.model.config._attn_implementation == "eager"
    got = enc.encode(texts, batch_size=2)
    assert got.shape == (5, 64) and np.isfinite(got).all()

    r = subprocess.run([sys.executable, "-m", "trainer.cli", "encode", "--model", str(tmp_path / "exp"), "--input",
                        str(_lines(tmp_path / "t.txt", texts)), "--output", str(tmp_path / "t.npy")],
                       cwd=ROOT, env=cli_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert np.allclose(np.load(tmp_path / "t.npy"), got, atol=1e-6)

    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(tmp_path / "exp"), device="cpu", trust_remote_code=True)
    assert np.allclose(st.encode(texts, batch_size=2, convert_to_numpy=True), got, atol=1e-5)


def _lines(path, texts):
    path.write_text("\n".join(texts) + "\n")
    return path
