"""Export and encode: the exported directory gives the training-time encoder's embeddings."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import RECIPES, ROOT, cli_env, contrast, make_docs


def training_time_encoder(run):
    """The stage's E as it was at the end of training: earlier adapters merged, this run's LoRA on top."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    from trainer.artifacts import read_run
    from trainer.config import load_config
    from trainer.modeling.build import build_model
    from trainer.stages.contrast import ContrastRecipe

    lineage, memory = read_run(str(run))
    recipe = load_config(ContrastRecipe, run / "final" / "recipe.yaml")
    earlier = {**lineage, "adapters": lineage["adapters"][:-1]}
    comp, identity, _ = build_model(recipe.model, recipe.train.seed, earlier, memory)
    set_peft_model_state_dict(comp.model, load_file(run / "final" / "adapter" / "adapter_model.safetensors"))
    return comp.eval(), identity


def test_exported_encoder_equals_training_time_encoder(tmp_path, ucl_run, smollm2_tokenizer):
    from trainer.cli import main
    from trainer.data.padding import pad_right
    from trainer.serving.encoder import Encoder

    (tmp_path / "exp").mkdir()
    (tmp_path / "exp" / "stale.txt").write_text("a file of the user's")
    assert main(["export", "--run", str(ucl_run), "--output", str(tmp_path / "exp")]) == 2  # not ours to replace
    (tmp_path / "exp" / "llm2comp_config.json").write_text("{}")  # an earlier export: replaced whole
    assert main(["export", "--run", str(ucl_run), "--output", str(tmp_path / "exp")]) == 0
    # Written beside and moved into place whole: the earlier folder replaced, no staging folder left.
    assert not (tmp_path / "exp" / "stale.txt").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["exp"]
    config = json.loads((tmp_path / "exp" / "llm2comp_config.json").read_text())
    assert config["memory_tokens"] == 4 and len(config["lineage"]["stages"]) == 2
    # The first token the runs trained with (the tiny recipes' <|endoftext|>, id 0), not the tokenizer's none.
    assert config["prefix_ids"] == [0]
    assert all(p.suffix != ".bin" for p in (tmp_path / "exp").iterdir())  # safetensors only

    texts = [d["text"] for d in make_docs(7, seed=31, lengths=(3, 15, 40))]
    exported = Encoder.from_pretrained(str(tmp_path / "exp")).encode(texts, batch_size=3)
    assert exported.dtype == np.float32 and exported.shape == (7, 64)

    comp, identity = training_time_encoder(ucl_run)
    from data_prep.tokenizer import load_tokenizer

    tok = load_tokenizer(smollm2_tokenizer)
    with torch.no_grad():
        ids, lengths = pad_right(tok(texts, add_special_tokens=False)["input_ids"], comp.pad_id)
        trained = comp.embed_texts(ids, lengths).numpy()
    # Merging W + BA changes rounding only.
    assert np.abs(exported - trained).max() <= 1e-4 * np.abs(trained).max()
    # Bidirectional attention survives the export: position 0 of the text moves when its last token changes
    # (the memory tokens follow the text, so they would see its end even through a causal model).
    enc = Encoder.from_pretrained(str(tmp_path / "exp"))
    ids = torch.tensor([[5, 17, 33, 41], [5, 17, 33, 42]])
    with torch.no_grad():
        hidden = enc.model.get_decoder()(input_ids=ids, is_causal=False).last_hidden_state
        causal = enc.model.get_decoder()(input_ids=ids, is_causal=True).last_hidden_state
    assert (hidden[0, 0] - hidden[1, 0]).abs().max() > 1e-3 * hidden.abs().max()
    assert torch.equal(causal[0, 0], causal[1, 0])

    # Text settings from the runs' shards: stage 1 windows of up to 64 tokens, sentences of up to 32.
    assert config["max_length"] == 64 and config["instruction_template"] == "{instruction}: {query}"
    # Nothing of the training machine: no absolute path in any file of the export.
    for f in (tmp_path / "exp").iterdir():
        if f.suffix in (".json", ".jinja", ".txt", ".md"):
            text = f.read_text()
            for root in {str(ucl_run.parent.parent), str(smollm2_tokenizer), str(ROOT)}:
                assert root not in text, (f.name, root)
    assert config["lineage"]["base"]["name"] == "smollm2-135m"
    assert [s["stage"] for s in config["lineage"]["stages"]] == ["pretrain", "ucl"]

    # The CLI gives the in-process API's embeddings.
    (tmp_path / "t.txt").write_text("\n".join(texts) + "\n")
    (tmp_path / "t.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    for name, flags in (("t.txt", []), ("t.jsonl", ["--compile"])):  # compiled blocks: the same embeddings
        r = subprocess.run([sys.executable, "-m", "trainer.cli", "encode", "--model", str(tmp_path / "exp"),
                            "--input", str(tmp_path / name), "--output", str(tmp_path / f"{name}.npy"), "--batch-size", "2",
                            *flags], cwd=ROOT, env=cli_env(), capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
        assert np.allclose(np.load(tmp_path / f"{name}.npy"), exported, atol=1e-6 if not flags else 1e-4)
        assert ("2/2 blocks compiled" in r.stdout) == bool(flags), r.stdout
    assert Encoder.from_pretrained(str(tmp_path / "exp"), compile=True).compiled_blocks == [2, 2]
    assert enc.compiled_blocks == [0, 2]


    # sentence-transformers loads the export through llm2comp's module and gives the same embeddings.
    from sentence_transformers import SentenceTransformer

    # sentence-transformers 6 asks for consent to import any module class it does not ship itself.
    st = SentenceTransformer(str(tmp_path / "exp"), device="cpu", trust_remote_code=True)
    assert np.allclose(st.encode(texts, batch_size=4, convert_to_numpy=True), exported, atol=1e-5)
    assert st.get_sentence_embedding_dimension() == 64

    # And it evaluates like any other encoder.
    sts = tmp_path / "stsbenchmark"
    sts.mkdir()
    (sts / "sts-test.csv").write_text("".join(f"g\tf\t2012\t{i}\t{i % 5}.0\t{a}\t{b}\n"
                                              for i, (a, b) in enumerate(zip(texts, texts[1:] + texts[:1]))))
    code = main(["eval", "sts", "--model", str(tmp_path / "exp"), "--data", str(tmp_path), "--output", str(tmp_path / "r.json")])
    assert code == 0 and json.loads((tmp_path / "r.json").read_text())["results"]["STSBenchmark"]["n"] == 7


def test_export_and_encode_errors(tmp_path, cli):
    code, _, err = cli("export", "--run", str(tmp_path), "--output", str(tmp_path / "x"))
    assert code == 2 and f"--run {tmp_path}: no final/lineage.json; not a finished" in err and "Traceback" not in err
    (tmp_path / "checkpoints").mkdir()  # a run stopped before its end
    code, _, err = cli("export", "--run", str(tmp_path), "--output", str(tmp_path / "x"))
    assert code == 2 and "the run has not finished (it has checkpoints" in err and "init.init_from" not in err
    code, _, err = cli("encode", "--model", str(tmp_path), "--input", str(tmp_path / "none.txt"), "--output", str(tmp_path / "o.npy"))
    assert code == 2 and "none.txt" in err


def test_export_takes_template_and_length_from_the_runs(tmp_path, ucl_run, smollm2_tokenizer):
    """A stage 3 on pairs made with another instruction template and length: the export formats queries
    with that template, cuts at that length, and `eval sts --instruction` reaches the model."""
    from conftest import write_jsonl
    from conftest import prep
    from trainer.cli import main
    from trainer.serving.encoder import Encoder

    docs = make_docs(48, seed=41, lengths=(5, 9, 14))
    rows = [{"query": docs[i]["text"], "positive": docs[i + 1]["text"], "negatives": [docs[i + 2]["text"]]}
            for i in range(0, 48, 3)]
    write_jsonl(tmp_path / "p.jsonl", rows)
    prep("pairs", "--input", tmp_path / "p.jsonl", "--tokenizer", smollm2_tokenizer, "--output", tmp_path / "pairs",
         "--max-tokens", "100", "--instruction", "Find it", "--template", "Query: {query} (task: {instruction})")
    r = contrast(1, RECIPES / "tiny-cpu-scl.yaml", f"data={tmp_path / 'pairs'}", f"init_from={ucl_run}",
                 f"output_dir={tmp_path / 'scl'}", "max_steps=1", "chunk=4")
    assert r.returncode == 0, r.stdout[-3000:]
    assert main(["export", "--run", str(tmp_path / "scl"), "--output", str(tmp_path / "exp")]) == 0
    config = json.loads((tmp_path / "exp" / "llm2comp_config.json").read_text())
    assert config["instruction_template"] == "Query: {query} (task: {instruction})"
    assert config["max_length"] == 100
    enc = Encoder.from_pretrained(str(tmp_path / "exp"))
    assert enc.format("a b", "Find it") == "Query: a b (task: Find it)"
    assert main(["export", "--run", str(tmp_path / "scl"), "--output", str(tmp_path / "short"), "--max-length", "7"]) == 0
    assert json.loads((tmp_path / "short" / "llm2comp_config.json").read_text())["max_length"] == 7

    sts = tmp_path / "sts" / "stsbenchmark"
    sts.mkdir(parents=True)
    texts = [d["text"] for d in docs[:9]]
    (sts / "sts-test.csv").write_text("".join(f"g\tf\t2012\t{i}\t{i % 5}.0\t{a}\t{b}\n"
                                              for i, (a, b) in enumerate(zip(texts, texts[1:] + texts[:1]))))
    scores = {}
    for extra in ([], ["--instruction", "Find it"]):
        out = tmp_path / f"r{len(extra)}.json"
        assert main(["eval", "sts", "--model", str(tmp_path / "exp"), "--data", str(tmp_path / "sts"), "--output", str(out),
                     *extra]) == 0
        scores[len(extra)] = json.loads(out.read_text())["results"]["STSBenchmark"]
    assert scores[0]["spearman"] != scores[2]["spearman"], "the instruction must reach the model"


def test_input_embedding_delta_reaches_the_next_stage_and_the_export(tmp_path, compression_data, sentences,
                                                                     smollm2_tokenizer):
    """model.train_input_embeddings: stage 1 saves E's delta (the rows that moved), stage 2 starts from E's
    table with it folded in, and both export forms encode as the training-time E does."""
    from conftest import launch
    from data_prep.tokenizer import load_tokenizer
    from trainer.cli import main
    from trainer.data.padding import pad_right
    from trainer.modeling.embedding_delta import load_delta
    from trainer.serving.encoder import Encoder

    s1, s2 = tmp_path / "s1", tmp_path / "s2"
    r = launch(1, f"data={compression_data}", f"output_dir={s1}", "max_steps=3", "train.micro_batch=4",
               "model.train_input_embeddings=true", "optim.lr=5e-2", "eval.windows=0", "optim.warmup_steps=2",
               "optim.warmup_start_lr=5e-3", "optim.schedule=linear", "optim.min_lr_ratio=0.5")
    assert r.returncode == 0, r.stdout[-3000:]
    # The schedule DeepSpeed stepped: warm-up from the floor 5e-3 to 5e-2 over 2 steps, then linear to 2.5e-2.
    lrs = [json.loads(line)["lr"] for line in (s1 / "metrics.jsonl").read_text().splitlines()]
    assert lrs == pytest.approx([5e-3 + 4.5e-2 / 2, 5e-2, 2.5e-2]), lrs
    assert json.loads((s1 / "effective_settings.json").read_text())["input_embeddings_trainable"] is True
    rows, values = load_delta(str(s1 / "final" / "embedding_delta.safetensors"))
    assert 0 < len(rows) < 49152 and values.abs().sum(-1).min() > 0, "only the rows seen in training, each moved"
    r = contrast(1, RECIPES / "tiny-cpu-ucl.yaml", f"data={sentences}", f"init_from={s1}", f"output_dir={s2}",
                 "max_steps=2")
    assert r.returncode == 0, r.stdout[-3000:]
    lineage = json.loads((s2 / "final" / "lineage.json").read_text())
    assert lineage["embedding_deltas"] == [str(s1 / "final" / "embedding_delta.safetensors")]

    texts = [d["text"] for d in make_docs(5, seed=32, lengths=(3, 15, 40))]
    comp, _ = training_time_encoder(s2)
    tok = load_tokenizer(smollm2_tokenizer)
    ids, lengths = pad_right(tok(texts, add_special_tokens=False)["input_ids"], comp.pad_id)
    with torch.no_grad():
        trained = comp.embed_texts(ids, lengths).numpy()
    from trainer.artifacts import read_run
    from trainer.config import load_config
    from trainer.modeling.build import build_model
    from trainer.stages.contrast import ContrastRecipe

    # Without the delta the same weights encode differently: it is not a no-op.
    lin, memory = read_run(str(s2))
    recipe = load_config(ContrastRecipe, s2 / "final" / "recipe.yaml")
    bare, _, _ = build_model(recipe.model, 0, {**lin, "adapters": lin["adapters"], "embedding_deltas": []}, memory)
    with torch.no_grad():
        assert np.abs(bare.eval().embed_texts(ids, lengths).numpy() - trained).max() > 1e-3 * np.abs(trained).max()
    for name, extra in (("merged", []), ("adapters", ["--adapter-only"])):
        assert main(["export", "--run", str(s2), "--output", str(tmp_path / name), *extra]) == 0
        exported = Encoder.from_pretrained(str(tmp_path / name)).encode(texts, batch_size=2)
        assert np.abs(exported - trained).max() <= 1e-4 * np.abs(trained).max(), name
