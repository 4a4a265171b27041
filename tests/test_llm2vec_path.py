"""LLM2Vec's path in the same engine: stage 1 `objective: mntp` on compression or sentence shards, mean /
last pooling through stages 2-3, export, `Encoder` and sentence-transformers; resume is exact (masks are
drawn from row seeds); bad mask tokens are one-line errors."""
import json

import numpy as np
import pytest
import torch

from conftest import RECIPES, contrast, launch, losses, make_docs, prep, write_jsonl


@pytest.fixture(scope="module")
def compression(tmp_path_factory, smollm2_tokenizer):
    d = tmp_path_factory.mktemp("mntp_data")
    src = write_jsonl(d / "docs.jsonl", make_docs(24, seed=13, lengths=(40, 80)))
    prep("compression", "--input", src, "--tokenizer", smollm2_tokenizer, "--output", d / "shards", "--max-tokens", "64")
    return d / "shards"


def mntp(out, data, *overrides, nproc=1):
    r = launch(nproc, "objective=mntp", f"data={data}", f"output_dir={out}", "optim.schedule=constant",
               "optim.warmup_ratio=0", *overrides)
    assert r.returncode == 0, r.stdout[-3000:]
    return r


def effective(run):
    return json.loads((run / "effective_settings.json").read_text())


@pytest.fixture(scope="module")
def mntp_run(tmp_path_factory, compression):
    out = tmp_path_factory.mktemp("mntp_run")
    mntp(out, compression, "pooling=mean", "max_steps=4")
    return out


def test_mntp_on_compression_shards_trains_without_memory_tokens(mntp_run):
    eff = effective(mntp_run)
    assert eff["pooling"] == "mean" and eff["memory_tokens"]["k"] == 0 and not eff["memory_tokens"]["trainable"]
    assert not (mntp_run / "final" / "memory.safetensors").exists()
    info = json.loads((mntp_run / "final" / "run_info.json").read_text())
    assert (info["objective"], info["data"]["kind"]) == ("mntp", "compression")
    got = losses(mntp_run)
    assert sorted(got) == [1, 2, 3, 4] and all(np.isfinite(list(got.values())))


def test_mntp_resume_draws_the_same_masks(tmp_path, compression, mntp_run):
    part = tmp_path / "part"
    mntp(part, compression, "pooling=mean", "max_steps=2")
    mntp(part, compression, "pooling=mean", "max_steps=4")  # resume=auto: continues from step 2
    whole, resumed = losses(mntp_run), losses(part)
    assert sorted(resumed) == [1, 2, 3, 4]
    for s in whole:
        assert abs(whole[s] - resumed[s]) <= 1e-6 * abs(whole[s]), (s, whole[s], resumed[s])


def test_mntp_on_sentence_shards_with_memory_pooling_keeps_memory_frozen(tmp_path, sentences):
    out = tmp_path / "run"
    mntp(out, sentences, "max_steps=2")
    eff = effective(out)
    assert eff["pooling"] == "memory" and eff["memory_tokens"]["k"] == 4 and not eff["memory_tokens"]["trainable"]
    assert json.loads((out / "final" / "run_info.json").read_text())["data"]["kind"] == "sentences"


def test_mean_pooling_through_every_stage_export_and_sentence_transformers(tmp_path, mntp_run, sentences, pairs,
                                                                          smollm2_tokenizer):
    ucl = contrast(1, RECIPES / "tiny-cpu-ucl.yaml", f"data={sentences}", f"init_from={mntp_run}", "pooling=mean",
                   f"output_dir={tmp_path / 'ucl'}", "max_steps=2")
    assert ucl.returncode == 0, ucl.stdout[-3000:]
    scl = contrast(1, RECIPES / "tiny-cpu-scl.yaml", f"data={pairs}", f"init_from={tmp_path / 'ucl'}", "pooling=mean",
                   f"output_dir={tmp_path / 'scl'}", "max_steps=2")
    assert scl.returncode == 0, scl.stdout[-3000:]
    assert effective(tmp_path / "scl")["pooling"] == "mean"

    from data_prep.tokenizer import load_tokenizer
    from test_export import training_time_encoder
    from trainer.cli import main
    from trainer.data.padding import pad_right
    from trainer.serving.encoder import Encoder

    assert main(["export", "--run", str(tmp_path / "scl"), "--output", str(tmp_path / "exp")]) == 0
    config = json.loads((tmp_path / "exp" / "llm2comp_config.json").read_text())
    assert (config["pooling"], config["memory_tokens"]) == ("mean", 0)
    assert not (tmp_path / "exp" / "memory.safetensors").exists()
    texts = [d["text"] for d in make_docs(6, seed=17, lengths=(3, 15, 40))]
    exported = Encoder.from_pretrained(str(tmp_path / "exp")).encode(texts, batch_size=4)
    comp, _ = training_time_encoder(tmp_path / "scl")
    tok = load_tokenizer(smollm2_tokenizer)
    with torch.no_grad():
        trained = comp.embed_texts(*pad_right(tok(texts, add_special_tokens=False)["input_ids"], comp.pad_id)).numpy()
    assert np.abs(exported - trained).max() <= 1e-4 * np.abs(trained).max()

    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(tmp_path / "exp"), device="cpu", trust_remote_code=True)
    assert np.allclose(st.encode(texts, batch_size=3, convert_to_numpy=True), exported, atol=1e-5)


def test_last_pooling_and_bad_mask_tokens(tmp_path, compression):
    out = tmp_path / "last"
    mntp(out, compression, "pooling=last", "max_steps=1")
    assert effective(out)["pooling"] == "last"
    r = launch(1, "objective=mntp", f"data={compression}", f"output_dir={tmp_path / 'bad'}", "objective.mask_token=NOT-A-TOKEN")
    err = [line for line in r.stderr.splitlines() if "error:" in line]
    assert r.returncode != 0 and len(err) == 1 and "objective.mask_token 'NOT-A-TOKEN'" in err[0], r.stderr[-2000:]
