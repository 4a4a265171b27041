"""`llm2comp prep compression`: the rows are exactly the documents' tokens, windowed and split."""
import json
import os
from collections import defaultdict
from pathlib import Path

import datasets
import pytest

from conftest import make_docs, write_jsonl
from data_prep.shards import sha256_file
from data_prep.tokenizer import load_tokenizer, tokenizer_identity


def prep(cli, *args):
    code, out, err = cli("prep", *args, "--no-progress")
    assert code == 0, err
    return out


def rows_of(path) -> list[dict]:
    return datasets.load_from_disk(str(path)).to_list()


@pytest.mark.parametrize("tokenizer_fixture", ["bpe_tokenizer", "smollm2_tokenizer"])
def test_rows_are_the_documents_tokens_windowed_and_split(tmp_path, cli, request, tokenizer_fixture):
    tok_dir = request.getfixturevalue(tokenizer_fixture)
    docs = make_docs(120, seed=3)
    src = write_jsonl(tmp_path / "docs.jsonl", docs)
    out = tmp_path / "out"
    prep(cli, "compression", "--input", src, "--tokenizer", tok_dir, "--output", out,
         "--max-tokens", "128", "--min-context", "10", "--min-continuation", "12", "--shard-rows", "37", "--workers", "1")

    tok = load_tokenizer(tok_dir)
    expected = {d["id"]: tok(d["text"], add_special_tokens=False)["input_ids"] for d in docs}
    rows = rows_of(out)
    by_doc = defaultdict(list)
    for r in rows:
        ctx, cont = r["context_ids"], r["continuation_ids"]
        assert len(ctx) >= 10 and len(cont) >= 12
        assert len(ctx) + len(cont) <= 128
        by_doc[r["doc_id"]].append(r)
    for doc_id, ids in expected.items():
        if len(ids) < 22:
            assert doc_id not in by_doc
            continue
        windows = sorted(by_doc[doc_id], key=lambda r: r["window"])
        assert [w["window"] for w in windows] == list(range(len(windows)))
        rebuilt = [t for w in windows for t in w["context_ids"] + w["continuation_ids"]]
        assert rebuilt == ids, f"{doc_id}: windows do not cover the document's tokens in order"
    assert any(len(v) > 1 for v in by_doc.values()), "corpus should contain multi-window documents"

    manifest = json.loads((out / "manifest.json").read_text())
    n_short = sum(len(ids) < 22 for ids in expected.values())
    assert n_short > 0
    assert manifest["skipped"] == {"too_short": n_short}
    assert manifest["totals"]["rows"] == len(rows)
    assert manifest["totals"]["documents"] == len(docs)
    assert manifest["totals"]["tokens"] == sum(len(ids) for ids in expected.values() if len(ids) >= 22)
    assert manifest["tokenizer"] == tokenizer_identity(tok, tok_dir)
    assert sum(s["rows"] for s in manifest["shards"]) == len(rows)
    assert all(s["rows"] == 37 for s in manifest["shards"][:-1])
    for s in manifest["shards"]:
        assert sha256_file(out / s["file"]) == s["sha256"]
    assert manifest["args"]["options"]["seed"] == 0
    assert not (out / ".prep_state").exists()


def test_bos_handling_is_recorded(bpe_tokenizer, smollm2_tokenizer):
    bpe = tokenizer_identity(load_tokenizer(bpe_tokenizer))
    assert bpe["adds_bos"] is True and bpe["prefix_ids"] == [bpe["bos_token_id"]] and bpe["suffix_ids"] == []
    smol = tokenizer_identity(load_tokenizer(smollm2_tokenizer))
    assert smol["adds_bos"] is False and smol["prefix_ids"] == []
    assert bpe["hash"] != smol["hash"]


def test_tokenizer_hash_survives_save_and_reload(tmp_path, smollm2_tokenizer):
    tok = load_tokenizer(smollm2_tokenizer)
    tok.save_pretrained(tmp_path / "copy")
    assert tokenizer_identity(load_tokenizer(str(tmp_path / "copy")))["hash"] == tokenizer_identity(tok)["hash"]


def test_seed_changes_splits_not_coverage(tmp_path, cli, bpe_tokenizer):
    src = write_jsonl(tmp_path / "d.jsonl", make_docs(40, seed=5))
    for seed in (0, 1):
        prep(cli, "compression", "--input", src, "--tokenizer", bpe_tokenizer, "--output", tmp_path / f"s{seed}",
             "--seed", seed, "--workers", "1", "--max-tokens", "128")
    a, b = rows_of(tmp_path / "s0"), rows_of(tmp_path / "s1")
    assert [r["context_ids"] + r["continuation_ids"] for r in a] == [r["context_ids"] + r["continuation_ids"] for r in b]
    assert [len(r["context_ids"]) for r in a] != [len(r["context_ids"]) for r in b]


def test_workers_do_not_change_a_byte(tmp_path, cli, bpe_tokenizer):
    src = write_jsonl(tmp_path / "d.jsonl", make_docs(300, seed=7))
    for w in (1, 2):
        prep(cli, "compression", "--input", src, "--tokenizer", bpe_tokenizer, "--output", tmp_path / f"w{w}",
             "--workers", w, "--chunk-docs", "16", "--shard-rows", "100", "--max-tokens", "128")
    m1 = json.loads((tmp_path / "w1" / "manifest.json").read_text())
    m2 = json.loads((tmp_path / "w2" / "manifest.json").read_text())
    assert m1["shards"] == m2["shards"] and len(m1["shards"]) > 2
    for s in m1["shards"]:
        assert (tmp_path / "w1" / s["file"]).read_bytes() == (tmp_path / "w2" / s["file"]).read_bytes()


def test_shared_wiki_paragraphs_sample(tmp_path, cli, smollm2_tokenizer):
    from conftest import shared
    import gzip
    import itertools

    src = shared("corpus", "wiki_paragraphs.valid.jsonl.gz")
    sample = tmp_path / "sample.jsonl.gz"
    with gzip.open(src, "rb") as fh, gzip.open(sample, "wb") as out:
        out.writelines(itertools.islice(fh, 1500))
    prep(cli, "compression", "--input", sample, "--tokenizer", smollm2_tokenizer, "--output", tmp_path / "out", "--workers", "2")
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["totals"]["documents"] == 1500
    assert manifest["totals"]["rows"] >= 1500 - sum(manifest["skipped"].values())
    rows = rows_of(tmp_path / "out")
    assert all(r["doc_id"] for r in rows) and max(len(r["context_ids"]) + len(r["continuation_ids"]) for r in rows) <= 512
