"""Bad input at the edges (issue 44): every numeric argument is range-checked by the parser, in one line that
names it, on every command that takes it; every JSON file the project writes parses as strict JSON."""
import json
import math

import pytest

from conftest import assert_one_line_error, failing_cli_cases

SIZES = [
    (["encode", "--model", "M", "--input", "I", "--output", "O.npy", "--batch-size", "-4"], "--batch-size", "got -4"),
    (["encode", "--model", "M", "--input", "I", "--output", "O.npy", "--batch-size", "0"], "--batch-size", "got 0"),
    (["export", "--run", "R", "--output", "O", "--max-length", "-5"], "--max-length", "got -5"),
    (["export", "--run", "R", "--output", "O", "--max-length", "0"], "--max-length", "got 0"),
    (["eval", "sts", "--model", "M", "--data", "D", "--batch-size", "-2"], "--batch-size", "got -2"),
    (["eval", "mteb", "--model", "M", "--tasks", "STSBenchmark", "--output", "O", "--max-length", "0"], "--max-length", "got 0"),
    (["analyze", "--model", "M", "--input", "I", "--output", "O", "--batch-size", "0"], "--batch-size", "got 0"),
    (["prep", "sentences", "--input", "I", "--tokenizer", "T", "--output", "O", "--max-tokens", "0"], "--max-tokens", "got 0"),
    (["prep", "compression", "--input", "I", "--tokenizer", "T", "--output", "O", "--chunk-docs", "-1"], "--chunk-docs", "got -1"),
    (["encode", "--model", "M", "--input", "I", "--output", "O.npy", "--batch-size", "many"], "--batch-size", "not an integer"),
]


def test_sizes_out_of_range_are_refused_naming_the_argument_before_any_work(tmp_path):
    """Before any file is read (the paths here do not exist): the range error comes first, from the parser."""
    results = failing_cli_cases(tmp_path, [argv for argv, _, _ in SIZES])
    for (argv, flag, got), result in zip(SIZES, results):
        assert_one_line_error(result, [f"argument {flag}", got])


def test_json_the_project_writes_is_strict_json(tmp_path, capsys):
    """A NaN (a Spearman of constant embeddings, a diverged loss) is written as null with one warning naming
    the file and key, in the eval results, the metrics log and the other files written through jsonio."""
    from data_prep import jsonio
    from trainer.engine.metrics import MetricsLogger

    path = tmp_path / "results.json"
    with open(path, "w") as fh:
        jsonio.dump({"sets": {"sts-b": {"spearman": math.nan, "pairs": 3}}, "all": [1.0, math.inf]}, fh, indent=2)
    strict = lambda text: json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in {text}"))  # noqa: E731
    assert strict(path.read_text()) == {"sets": {"sts-b": {"spearman": None, "pairs": 3}}, "all": [1.0, None]}
    err = capsys.readouterr().err
    assert f"{path}: sets.sts-b.spearman, all[1] not finite; written as null" in err

    log = MetricsLogger(str(tmp_path / "run"), True, 0, 2, False, False)
    log.log(1, {"loss": math.nan, "lr": 1e-4})
    log.close()
    rows = [strict(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["loss"] is None and rows[0]["lr"] == 1e-4


def test_mistyped_names_and_missing_models_fail_before_any_task_loads(tmp_path):
    missing = tmp_path / "no-such-model"
    cases = [["eval", "mteb", "--model", tmp_path, "--benchmark", "llm2comp-offlin", "--output", tmp_path / "o"],
             ["eval", "mteb", "--model", missing, "--benchmark", "MTEB(eng, v2)", "--output", tmp_path / "o"]]
    typo, no_model = failing_cli_cases(tmp_path, cases)
    assert_one_line_error(typo, ["--benchmark 'llm2comp-offlin'", "did you mean 'llm2comp-offline'"])
    assert_one_line_error(no_model, [f"--model {missing}: no such directory"])


def test_outputs_and_inputs_are_checked_before_any_work_and_nothing_partial_is_left(tmp_path):
    """export: a missing or malformed --eval file, or an --output that is a file, fail in one line before the
    run is read, and no export folder appears; encode: an empty input, or an --output that is a folder."""
    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "a-file").write_text("x")
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "one.txt").write_text("a text\n")
    out = tmp_path / "exp"
    cases = [["export", "--run", tmp_path, "--output", out, "--eval", tmp_path / "missing.json"],
             ["export", "--run", tmp_path, "--output", out, "--eval", tmp_path / "bad.json"],
             ["export", "--run", tmp_path, "--output", tmp_path / "a-file"],
             ["encode", "--model", tmp_path, "--input", tmp_path / "empty.txt", "--output", tmp_path / "e.npy"],
             ["encode", "--model", tmp_path, "--input", tmp_path / "one.txt", "--output", tmp_path]]
    missing, bad, file_out, empty, folder_out = failing_cli_cases(tmp_path, cases)
    assert_one_line_error(missing, [f"--eval {tmp_path / 'missing.json'}: No such file"])
    assert_one_line_error(bad, [f"--eval {tmp_path / 'bad.json'}: not valid JSON"])
    assert_one_line_error(file_out, [f"--output {tmp_path / 'a-file'}: is a file"])
    assert_one_line_error(empty, [f"{tmp_path / 'empty.txt'}: no texts to encode"])
    assert_one_line_error(folder_out, [f"--output {tmp_path}: is a folder"])
    assert not out.exists() and not list(tmp_path.glob(".exp.partial-*"))


def test_recipe_paths_are_checked_before_the_model_is_built(tmp_path, compression_data):
    """A wrong data=, eval.path=, deepspeed= or output_dir= fails in one line naming the key, in seconds: before
    the model is built and probed (which is what a late check would print first)."""
    import time

    from conftest import launch

    (tmp_path / "a-file").write_text("x")
    cases = {"data.path": [f"data={tmp_path / 'nowhere'}"], "eval.path": [f"eval.path={tmp_path}"],
             "train.deepspeed": [f"train.deepspeed={tmp_path / 'none.json'}"],
             "train.output_dir": [f"output_dir={tmp_path / 'a-file'}"]}
    for key, overrides in cases.items():
        start = time.monotonic()
        r = launch(1, f"data={compression_data}", f"output_dir={tmp_path / 'run'}", *overrides)
        errors = [l for l in r.stderr.splitlines() if "error:" in l]
        assert r.returncode != 0 and len(errors) == 1 and key in errors[0], (key, r.stderr[-2000:])
        assert "bidirectional" not in r.stdout + r.stderr, key  # the model was never built
        assert time.monotonic() - start < 60


@pytest.mark.parametrize("schema,override,needle", [
    ("trainer.stages.pretrain:PretrainRecipe", "optim.lr=-1e-3", "optim.lr must be > 0, got -0.001"),
    ("trainer.stages.pretrain:PretrainRecipe", "optim.grad_clip=-1", "optim.grad_clip must be >= 0"),
    ("trainer.stages.pretrain:PretrainRecipe", "eval.windows=-1", "eval.windows must be >= 0"),
    ("trainer.stages.contrast:ContrastRecipe", "contrast.temperature=0", "contrast.temperature must be > 0, got 0"),
    ("trainer.stages.contrast:ContrastRecipe", "contrast.negatives=-1", "contrast.negatives must be >= 0, got -1"),
])
def test_a_range_error_names_the_key_that_failed(schema, override, needle):
    import importlib

    from trainer.config import ConfigError, load_config

    module, name = schema.split(":")
    with pytest.raises(ConfigError) as e:
        load_config(getattr(importlib.import_module(module), name), None, [override])
    assert needle in str(e.value) and "," not in str(e.value).split(" must ")[0]


def test_a_truncated_weights_file_is_named_in_one_line(tmp_path, smollm2_tokenizer):
    """A model folder whose model.safetensors was cut short (an interrupted copy): eval sts of it as a plain
    causal LM, and encode of it as an export, name the file; models pull names a --wheel that is not there."""
    from tiny_models import tiny_causal_lm
    from transformers import AutoTokenizer

    lm = tmp_path / "lm"
    tiny_causal_lm("llama", vocab_size=49152).save_pretrained(lm)
    AutoTokenizer.from_pretrained(smollm2_tokenizer).save_pretrained(lm)
    weights = lm / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    (tmp_path / "sts" / "stsbenchmark").mkdir(parents=True)
    (tmp_path / "sts" / "stsbenchmark" / "sts-test.csv").write_text("g\tf\t2012\t0\t1.0\ta cat\ta dog\n")
    (tmp_path / "t.txt").write_text("a text\n")
    cases = [["eval", "sts", "--model", lm, "--pooling", "mean", "--data", tmp_path / "sts"],
             ["models", "pull", "smollm2-135m", "--wheel", tmp_path / "missing.whl"]]
    sts, pull = failing_cli_cases(tmp_path, cases)
    assert_one_line_error(sts, [f"{weights}: ", "damaged or partly copied"])
    assert_one_line_error(pull, [f"--wheel {tmp_path / 'missing.whl'}: no such file"])


def test_a_tokenizer_error_is_said_whole_in_one_line(tmp_path):
    """transformers explains an unusable tokenizer folder over several lines; the error keeps all of it."""
    tok = tmp_path / "tok"
    tok.mkdir()
    (tok / "tokenizer_config.json").write_text("{}")
    (tmp_path / "s.txt").write_text("a sentence\n")
    (result,) = failing_cli_cases(tmp_path, [["prep", "sentences", "--input", tmp_path / "s.txt", "--tokenizer", tok,
                                              "--output", tmp_path / "out"]])
    assert_one_line_error(result, [f"tokenizer {tok}: cannot load: ", "(1) a `tokenizers` library serialization file"])
