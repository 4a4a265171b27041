"""`prep sentences` and `prep pairs`: ids equal the tokenizer's, instructions applied as documented."""
import gzip
import json

import datasets
import pytest

from conftest import make_docs, shared, write_jsonl
from data_prep.tokenizer import load_tokenizer


def prep(cli, *args):
    code, out, err = cli("prep", *args, "--no-progress")
    assert code == 0, err
    return out


def test_sentences_rows_and_truncation(tmp_path, cli, bpe_tokenizer):
    texts = [d["text"] for d in make_docs(50, seed=9, lengths=(3, 20, 200))]
    (tmp_path / "s.txt").write_text("\n".join(texts) + "\n")
    prep(cli, "sentences", "--input", tmp_path / "s.txt", "--tokenizer", bpe_tokenizer, "--output", tmp_path / "o",
         "--max-tokens", "64", "--workers", "2")
    tok = load_tokenizer(bpe_tokenizer)
    rows = datasets.load_from_disk(str(tmp_path / "o")).to_list()
    assert [r["input_ids"] for r in rows] == [tok(t, add_special_tokens=False)["input_ids"][:64] for t in texts]
    assert rows[0]["doc_id"] == f"{tmp_path / 's.txt'}:1"
    m = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert m["kind"] == "sentences"
    assert m["totals"]["truncated"] == sum(len(tok(t, add_special_tokens=False)["input_ids"]) > 64 for t in texts) > 0


def test_pairs_instructions_templates_and_negatives(tmp_path, cli, bpe_tokenizer):
    records = [
        {"query": "river city", "positive": "a city on a river", "negative": "a mountain village", "task": "retrieval"},
        {"query": "music history", "positive": "history of music", "negatives": ["science", "energy light"],
         "instruction": "Find the passage", "source": "wiki"},
        {"query": "planet", "positive": "a planet"},
        {"query": "bad task", "positive": "x", "task": "nope"},
        {"query": "no positive"},
        {"query": "q", "positive": "p", "negatives": ["ok", 3]},
        {"query": "q", "positive": "p", "negatives": "one text, not a list"},  # skipped, not one hard negative
    ]
    src = write_jsonl(tmp_path / "pairs.jsonl", records)
    (tmp_path / "instr.json").write_text(json.dumps({"retrieval": "Retrieve a passage"}))
    prep(cli, "pairs", "--input", src, "--tokenizer", bpe_tokenizer, "--output", tmp_path / "o",
         "--instructions", tmp_path / "instr.json", "--instruction", "Default", "--template", "Instruct: {instruction}\nQuery: {query}",
         "--workers", "1")
    tok = load_tokenizer(bpe_tokenizer)
    enc = lambda t: tok(t, add_special_tokens=False)["input_ids"]
    rows = datasets.load_from_disk(str(tmp_path / "o")).to_list()
    assert len(rows) == 3
    assert rows[0]["query_ids"] == enc("Instruct: Retrieve a passage\nQuery: river city")
    assert rows[0]["negative_ids"] == [enc("a mountain village")] and rows[0]["source"] == "retrieval"
    assert rows[1]["query_ids"] == enc("Instruct: Find the passage\nQuery: music history")
    assert rows[1]["negative_ids"] == [enc("science"), enc("energy light")] and rows[1]["source"] == "wiki"
    assert rows[2]["query_ids"] == enc("Instruct: Default\nQuery: planet")
    assert rows[2]["negative_ids"] == [] and rows[2]["source"] == "pairs"
    m = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert m["skipped"] == {"unknown_task:nope": 1, "missing_field:positive": 1, "non_string_field:negatives": 1,
                            "non_list_field:negatives": 1}


def test_pairs_default_template_and_no_instruction(tmp_path, cli, bpe_tokenizer):
    src = write_jsonl(tmp_path / "p.jsonl", [{"query": "q one", "positive": "p", "instruction": "Do it"}, {"query": "q two", "positive": "p"}])
    prep(cli, "pairs", "--input", src, "--tokenizer", bpe_tokenizer, "--output", tmp_path / "o", "--workers", "1")
    tok = load_tokenizer(bpe_tokenizer)
    rows = datasets.load_from_disk(str(tmp_path / "o")).to_list()
    assert rows[0]["query_ids"] == tok("Do it: q one", add_special_tokens=False)["input_ids"]
    assert rows[1]["query_ids"] == tok("q two", add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize(
    "content, needle",
    [("[1, 2]", "expected a JSON object"), ('{"a": 3}', "key 'a' maps to a int"), ("{oops", "not valid JSON")],
)
def test_bad_instructions_file(tmp_path, cli, bpe_tokenizer, content, needle):
    src = write_jsonl(tmp_path / "p.jsonl", [{"query": "q", "positive": "p"}])
    (tmp_path / "i.json").write_text(content)
    code, _, err = cli("prep", "pairs", "--input", src, "--tokenizer", bpe_tokenizer, "--output", tmp_path / "o",
                       "--instructions", tmp_path / "i.json", "--no-progress")
    assert code == 2 and needle in err and str(tmp_path / "i.json") in err and len(err.strip().splitlines()) == 1


def test_pairs_refuse_plain_text(tmp_path, cli, bpe_tokenizer):
    (tmp_path / "p.txt").write_text("a line\n")
    code, _, err = cli("prep", "pairs", "--input", tmp_path / "p.txt", "--tokenizer", bpe_tokenizer, "--output", tmp_path / "o", "--no-progress")
    assert code == 2 and "p.txt" in err and "pairs need .jsonl or .parquet" in err


def test_shared_snli_and_sentences(tmp_path, cli, smollm2_tokenizer):
    snli = shared("nli", "snli_triplets.jsonl")
    prep(cli, "pairs", "--input", snli, "--tokenizer", smollm2_tokenizer, "--output", tmp_path / "p", "--workers", "2",
         "--instruction", "Given a premise, retrieve a hypothesis that is entailed by the premise")
    m = json.loads((tmp_path / "p" / "manifest.json").read_text())
    assert m["totals"]["rows"] == 5864 and m["skipped"] == {}
    sents = shared("corpus", "wiki_sentences.txt.gz")
    sample = tmp_path / "s.txt.gz"
    with gzip.open(sents, "rb") as fh, gzip.open(sample, "wb") as out:
        out.writelines(line for _, line in zip(range(3000), fh))
    prep(cli, "sentences", "--input", sample, "--tokenizer", smollm2_tokenizer, "--output", tmp_path / "s", "--workers", "2")
    assert json.loads((tmp_path / "s" / "manifest.json").read_text())["totals"]["rows"] == 3000
