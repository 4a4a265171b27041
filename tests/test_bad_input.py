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
