"""Input formats, and bad input: one clear line or a counted skip, never a traceback or silent loss."""
import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import datasets
from conftest import make_docs, write_jsonl


def prep(cli, *args):
    code, out, err = cli("prep", *args, "--no-progress")
    assert code == 0, err
    return out


def manifest(path):
    return json.loads((path / "manifest.json").read_text())


def doc_tokens(path):
    """Each document's tokens, in order, as the shards hold them."""
    rows = datasets.load_from_disk(str(path)).to_list()
    return sorted(
        (r["context_ids"] + r["continuation_ids"]) for r in rows
    )


def one_line_error(code, err, *needles):
    assert code == 2, err
    lines = [l for l in err.strip().splitlines() if l.strip()]
    assert len(lines) == 1, f"expected one line, got: {err!r}"
    assert "Traceback" not in err
    for n in needles:
        assert str(n) in lines[0], f"{n!r} not in {lines[0]!r}"


def test_every_format_gives_the_same_documents(tmp_path, cli, bpe_tokenizer):
    docs = make_docs(40, seed=21, lengths=(40, 150))
    texts = [d["text"] for d in docs]
    (tmp_path / "lines.txt").write_text("\n".join(texts) + "\n")
    # Paragraph mode: a document may span several lines; blank lines separate documents.
    (tmp_path / "paras.txt").write_text("\n\n".join(t.replace(". ", ".\n", 1) for t in texts) + "\n")
    with gzip.open(tmp_path / "lines.txt.gz", "wt") as fh:
        fh.write("\n".join(texts) + "\n")
    write_jsonl(tmp_path / "docs.jsonl.gz", docs, gz=True)
    pq.write_table(pa.table({"text": texts, "id": [d["id"] for d in docs]}), tmp_path / "docs.parquet", row_group_size=7)
    with open(tmp_path / "docs.parquet", "rb") as src, gzip.open(tmp_path / "docs2.parquet.gz", "wb") as dst:
        dst.write(src.read())
    common = ["--tokenizer", bpe_tokenizer, "--workers", "1", "--max-tokens", "1024"]
    results = {}
    for name in ["lines.txt", "lines.txt.gz", "docs.jsonl.gz", "docs.parquet", "docs2.parquet.gz"]:
        prep(cli, "compression", "--input", tmp_path / name, "--output", tmp_path / f"o_{name}", *common)
        results[name] = doc_tokens(tmp_path / f"o_{name}")
    prep(cli, "compression", "--input", tmp_path / "paras.txt", "--paragraphs", "--output", tmp_path / "o_p", *common)
    first = results["lines.txt"]
    assert len(first) == 40
    for name, got in results.items():
        assert got == first, name
    # The paragraph file has newlines inside documents: same count, one document per blank-line block.
    assert manifest(tmp_path / "o_p")["totals"]["documents"] == 40
    assert manifest(tmp_path / "o_docs.parquet")["totals"]["documents"] == 40


def test_globs_and_directories(tmp_path, cli, bpe_tokenizer):
    for i in range(3):
        write_jsonl(tmp_path / "corpus" / f"sub{i % 2}" / f"p{i}.jsonl", make_docs(10, seed=i, lengths=(60,)))
    (tmp_path / "corpus" / "README.md").write_text("not an input")
    common = ["--tokenizer", bpe_tokenizer, "--workers", "1"]
    prep(cli, "compression", "--input", tmp_path / "corpus", "--output", tmp_path / "dir", *common)
    prep(cli, "compression", "--input", f"{tmp_path}/corpus/**/*.jsonl", "--output", tmp_path / "glob", *common)
    assert manifest(tmp_path / "dir")["totals"]["documents"] == 30
    assert doc_tokens(tmp_path / "dir") == doc_tokens(tmp_path / "glob")
    # The same file given twice is read once.
    prep(cli, "compression", "--input", tmp_path / "corpus", f"{tmp_path}/corpus/sub0/p0.jsonl", "--output", tmp_path / "twice", *common)
    assert manifest(tmp_path / "twice")["totals"]["documents"] == 30


@pytest.fixture
def messy(tmp_path):
    """A JSONL file with one bad record of each kind among good ones, plus an empty and a binary file."""
    good = make_docs(6, seed=1, lengths=(80,))
    lines = [json.dumps(good[0]).encode(),
             b'{"id": "bad-utf8", "text": "caf\xe9 au lait and more words here to pass"}',
             json.dumps(good[1]).encode(),
             b'{"id": "broken", "text": "unterminated',
             json.dumps(good[2]).encode(),
             b'["a", "list"]',
             json.dumps({"id": "notext", "title": "x"}).encode(),
             json.dumps({"id": "numtext", "text": 42}).encode(),
             json.dumps(good[3]).encode()]
    d = tmp_path / "messy"
    d.mkdir()
    (d / "a.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    (d / "b_empty.jsonl").write_bytes(b"")
    (d / "c_binary.jsonl").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)))
    return d


def test_bad_records_are_skipped_and_reported_by_reason(tmp_path, cli, bpe_tokenizer, messy):
    out = prep(cli, "compression", "--input", messy, "--tokenizer", bpe_tokenizer, "--output", tmp_path / "o", "--workers", "1")
    m = manifest(tmp_path / "o")
    a = str(messy / "a.jsonl")
    assert m["skipped"] == {
        "invalid_utf8": 1, "malformed_json": 1, "not_an_object": 1, "missing_field:text": 1,
        "non_string_field:text": 1, "empty_file": 1, "binary_file": 1,
    }
    assert m["skipped_examples"]["invalid_utf8"] == [f"{a}:2"]
    assert m["skipped_examples"]["malformed_json"] == [f"{a}:4"]
    assert m["skipped_examples"]["missing_field:text"] == [f"{a}:7"]
    assert m["skipped_examples"]["empty_file"] == [str(messy / "b_empty.jsonl")]
    assert m["totals"]["documents"] == 9 and m["totals"]["rows"] >= 4
    assert f"skipped malformed_json: 1 (first: {a}:4)" in out


@pytest.mark.parametrize("workers", [1, 2])
def test_strict_stops_at_the_first_bad_record(tmp_path, cli, bpe_tokenizer, messy, workers):
    code, _, err = cli("prep", "compression", "--input", messy, "--tokenizer", bpe_tokenizer,
                       "--output", tmp_path / "o", "--strict", "--workers", workers, "--no-progress")
    one_line_error(code, err, f"{messy / 'a.jsonl'}:2", "invalid_utf8", "--strict")
    assert not (tmp_path / "o" / "manifest.json").exists()


def test_truncated_gzip_keeps_what_was_read_and_counts_the_rest(tmp_path, cli, bpe_tokenizer):
    path = write_jsonl(tmp_path / "d.jsonl.gz", make_docs(200, seed=3, lengths=(60,)), gz=True)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    prep(cli, "compression", "--input", path, "--tokenizer", bpe_tokenizer, "--output", tmp_path / "o", "--workers", "1")
    m = manifest(tmp_path / "o")
    assert m["skipped"].get("corrupt_file") == 1
    assert 0 < m["totals"]["documents"] < 200


@pytest.mark.parametrize(
    "make_args, needles",
    [
        (lambda t, tok: ["--input", t / "nope.jsonl", "--tokenizer", tok], ["nope.jsonl", "no such file"]),
        (lambda t, tok: ["--input", f"{t}/*.nothing", "--tokenizer", tok], ["no file matches"]),
        (lambda t, tok: ["--input", t / "doc.csv", "--tokenizer", tok], ["doc.csv", "unsupported input format"]),
        (lambda t, tok: ["--input", t / "ok.jsonl", "--tokenizer", t / "no_tokenizer"], ["no_tokenizer", "no such directory"]),
        (lambda t, tok: ["--input", t / "ok.jsonl", "--tokenizer", t / "empty_dir"], ["empty_dir", "cannot load"]),
        (lambda t, tok: ["--input", t / "short.jsonl", "--tokenizer", tok], ["no rows were produced", "too_short=2"]),
        (lambda t, tok: ["--input", t / "ok.jsonl", "--tokenizer", tok, "--max-tokens", "30"], ["--max-tokens 30"]),
        (lambda t, tok: ["--input", t / "ok.jsonl", "--tokenizer", tok, "--slice", "3/3"], ["--slice 3/3"]),
    ],
    ids=["missing-path", "empty-glob", "unknown-format", "missing-tokenizer", "unreadable-tokenizer",
         "empty-result", "bad-window-args", "bad-slice"],
)
def test_fatal_input_errors_are_one_line(tmp_path, cli, bpe_tokenizer, make_args, needles):
    write_jsonl(tmp_path / "ok.jsonl", make_docs(5, lengths=(60,)))
    write_jsonl(tmp_path / "short.jsonl", [{"text": "too short"}, {"text": "tiny"}])
    (tmp_path / "doc.csv").write_text("a,b\n")
    (tmp_path / "empty_dir").mkdir()
    code, _, err = cli("prep", "compression", *make_args(tmp_path, bpe_tokenizer), "--output", tmp_path / "o", "--no-progress")
    one_line_error(code, err, *needles)


def test_output_made_with_other_settings_is_refused(tmp_path, cli, bpe_tokenizer):
    src = write_jsonl(tmp_path / "d.jsonl", make_docs(20, lengths=(60,)))
    common = ["--input", src, "--tokenizer", bpe_tokenizer, "--output", tmp_path / "o", "--workers", "1", "--no-progress"]
    assert cli("prep", "compression", *common)[0] == 0
    code, out, _ = cli("prep", "compression", *common)
    assert code == 0 and "nothing to do" in out
    code, _, err = cli("prep", "compression", *common, "--seed", "3")
    one_line_error(code, err, "other settings", "options", "--overwrite")
    code, _, err = cli("prep", "compression", *common, "--seed", "3", "--overwrite")
    assert code == 0, err
    assert manifest(tmp_path / "o")["args"]["options"]["seed"] == 3
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x").write_text("y")
    code, _, err = cli("prep", "compression", "--input", src, "--tokenizer", bpe_tokenizer, "--output", tmp_path / "other", "--no-progress")
    one_line_error(code, err, "not an llm2comp prep output")
