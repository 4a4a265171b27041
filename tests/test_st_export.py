"""The export is a complete sentence-transformers model: model card, prompts, max length; `.save()` writes a
copy that loads again with equal embeddings; `model_kwargs` decide the dtype; `Encoder.encode` takes the
sentence-transformers arguments (and refuses unknown ones); `--adapter-only` equals the merged export."""
import json

import numpy as np
import pytest
import torch

from conftest import make_docs, write_jsonl
from conftest import RECIPES, contrast, prep

INSTRUCTION = "Find the sentence that follows"


@pytest.fixture(scope="module")
def scl_run(tmp_path_factory, ucl_run, smollm2_tokenizer):
    d = tmp_path_factory.mktemp("scl_for_st")
    docs = make_docs(48, seed=43, lengths=(5, 9, 14))
    write_jsonl(d / "p.jsonl", [{"query": docs[i]["text"], "positive": docs[i + 1]["text"], "negatives": [docs[i + 2]["text"]]}
                                for i in range(0, 48, 3)])
    prep("pairs", "--input", d / "p.jsonl", "--tokenizer", smollm2_tokenizer, "--output", d / "pairs",
         "--max-tokens", "40", "--instruction", INSTRUCTION)
    r = contrast(1, RECIPES / "tiny-cpu-scl.yaml", f"data={d / 'pairs'}", f"init_from={ucl_run}",
                 f"output_dir={d / 'run'}", "max_steps=1", "chunk=4")
    assert r.returncode == 0, r.stdout[-3000:]
    return d / "run"


@pytest.fixture(scope="module")
def exports(tmp_path_factory, scl_run):
    from trainer.cli import main

    d = tmp_path_factory.mktemp("st_exports")
    sts = d / "r.json"
    sts.write_text(json.dumps({"results": {"STSBenchmark": {"spearman": 12.34, "n": 7}}}))
    assert main(["export", "--run", str(scl_run), "--output", str(d / "merged"), "--eval", str(sts), "--name", "me/enc"]) == 0
    assert main(["export", "--run", str(scl_run), "--output", str(d / "adapters"), "--adapter-only"]) == 0
    return d


TEXTS = [d["text"] for d in make_docs(6, seed=51, lengths=(3, 15, 30))]


def test_the_export_carries_card_prompts_and_length(exports):
    d = exports / "merged"
    card = (d / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: sentence-transformers") and "base_model: smollm2-135m" in card
    assert "license: apache-2.0" in card and "| STSBenchmark | 12.34 | 7 |" in card and "me/enc" in card
    assert "| pretrain | kl | compression |" in card and "| ucl |" in card and "| scl |" in card
    st_config = json.loads((d / "config_sentence_transformers.json").read_text())
    assert st_config["prompts"] == {"query": f"{INSTRUCTION}: ", "document": ""}
    assert st_config["similarity_fn_name"] == "cosine"
    assert json.loads((d / "sentence_bert_config.json").read_text())["max_seq_length"] == 64


def test_sentence_transformers_save_writes_a_copy_that_loads_again(exports, tmp_path):
    from sentence_transformers import SentenceTransformer

    from trainer.serving.encoder import Encoder

    st = SentenceTransformer(str(exports / "merged"), device="cpu", trust_remote_code=True)
    assert st.max_seq_length == 64 and st.similarity_fn_name == "cosine"
    assert st.prompts["query"] == f"{INSTRUCTION}: "
    first = st.encode(TEXTS, convert_to_numpy=True)
    st.save(str(tmp_path / "copy"))
    copy = SentenceTransformer(str(tmp_path / "copy"), device="cpu", trust_remote_code=True)
    assert np.allclose(copy.encode(TEXTS, convert_to_numpy=True), first, atol=1e-6)
    assert (tmp_path / "copy" / "model.safetensors").exists() and (tmp_path / "copy" / "memory.safetensors").exists()
    # The prompt sentence-transformers prepends is the one llm2comp's own API applies for queries.
    ours = Encoder.from_pretrained(str(tmp_path / "copy")).encode_query(TEXTS)
    assert np.allclose(copy.encode(TEXTS, prompt_name="query", convert_to_numpy=True), ours, atol=1e-5)
    # dtype from model_kwargs, not always fp32 first
    bf16 = SentenceTransformer(str(exports / "merged"), device="cpu", trust_remote_code=True,
                               model_kwargs={"dtype": torch.bfloat16})
    assert bf16[0].model.dtype == torch.bfloat16


def test_encode_takes_the_sentence_transformers_arguments(exports):
    from trainer.serving.encoder import Encoder

    enc = Encoder.from_pretrained(str(exports / "merged"))
    plain = enc.encode(TEXTS, batch_size=4)
    assert plain.dtype == np.float32 and plain.shape == (6, 64)
    assert np.allclose(enc.encode(TEXTS, prompt=f"{INSTRUCTION}: "), enc.encode(TEXTS, prompt_name="query"), atol=1e-6)
    assert np.allclose(enc.encode(TEXTS, instruction=INSTRUCTION), enc.encode_query(TEXTS), atol=1e-6)
    # Instructions reach the model: queries and documents differ exactly when an instruction is set.
    assert not np.allclose(enc.encode_query(TEXTS), enc.encode_document(TEXTS), atol=1e-4)
    assert np.allclose(enc.encode_document(TEXTS), plain, atol=1e-6)
    assert np.allclose(enc.encode(TEXTS, instruction=""), plain, atol=1e-6)
    normed = enc.encode(TEXTS, normalize_embeddings=True)
    assert np.allclose(np.linalg.norm(normed, axis=1), 1.0, atol=1e-5)
    tensor = enc.encode(TEXTS, convert_to_tensor=True)
    assert torch.is_tensor(tensor) and torch.allclose(tensor, torch.from_numpy(plain), atol=1e-6)
    one = enc.encode(TEXTS[0])
    assert one.shape == (64,) and np.allclose(one, plain[0], atol=1e-5)
    assert enc.similarity(plain[:2], plain[:3]).shape == (2, 3)
    with pytest.raises(TypeError):
        enc.encode(TEXTS, normalise=True)  # a misspelt argument is an error, not silently dropped
    with pytest.raises(ValueError, match="prompt_name 'passage'"):
        enc.encode(TEXTS, prompt_name="passage")


def test_adapter_only_export_equals_the_merged_one(exports):
    from sentence_transformers import SentenceTransformer

    from trainer.serving.encoder import Encoder
    from trainer.serving.export import size_mb

    merged, adapters = exports / "merged", exports / "adapters"
    config = json.loads((adapters / "llm2comp_config.json").read_text())
    assert config["adapter_only"] and config["base_model"]["name"] == "smollm2-135m"
    assert [a.split("-", 1)[1] for a in config["adapters"]] == ["pretrain", "ucl", "scl"]
    assert not (adapters / "model.safetensors").exists()
    for a in config["adapters"]:
        assert json.loads((adapters / a / "adapter_config.json").read_text())["base_model_name_or_path"] == "smollm2-135m"
    assert size_mb(adapters) < 0.5 * size_mb(merged)
    got = Encoder.from_pretrained(str(adapters)).encode(TEXTS)
    want = Encoder.from_pretrained(str(merged)).encode(TEXTS)
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()
    st = SentenceTransformer(str(adapters), device="cpu", trust_remote_code=True)
    assert np.allclose(st.encode(TEXTS, convert_to_numpy=True), got, atol=1e-5)
