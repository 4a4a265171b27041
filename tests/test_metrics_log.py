"""A run resumed after a crash reruns the steps logged after its last checkpoint: metrics.jsonl and TensorBoard
must show each step once, with the rerun's figures, and keep the crashed run's rows aside, not lose them."""
import json

from trainer.engine.metrics import MetricsLogger


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def _scalars(tb_dir, tag):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tb_dir))
    acc.Reload()
    return [(e.step, round(e.value, 6)) for e in acc.Scalars(tag)]


def test_a_resumed_run_logs_each_step_once_and_sets_the_crashed_rows_aside(tmp_path):
    crashed = MetricsLogger(str(tmp_path), True, 0, 10, progress=False)
    for step in range(1, 8):
        crashed.log(step, {"loss": float(step)})
        if step % 3 == 0:
            crashed.log_eval(step, {"recovered": step / 10})
    crashed.close()
    with open(tmp_path / "metrics.jsonl", "a") as fh:
        fh.write('{"step": 8, "loss"')  # the crash cut the last line short

    resumed = MetricsLogger(str(tmp_path), True, 4, 10, progress=False)  # the checkpoint was at step 4
    for step in range(5, 11):
        resumed.log(step, {"loss": 100.0 + step})
    resumed.close()

    rows = _rows(tmp_path / "metrics.jsonl")
    train = [(r["step"], r["loss"]) for r in rows if not r.get("eval")]
    assert train == [(s, float(s)) for s in range(1, 5)] + [(s, 100.0 + s) for s in range(5, 11)]
    assert [r["step"] for r in rows if r.get("eval")] == [3]
    assert resumed.superseded == 5  # steps 5, 6, 7, the eval at 6 and the cut line
    aside = (tmp_path / "metrics.superseded.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in aside[:4]] == [5, 6, 6, 7] and aside[4] == '{"step": 8, "loss"'
    # TensorBoard: the crashed run's steps 5-7 are purged, the rerun's shown.
    assert _scalars(tmp_path / "tensorboard", "loss") == [(s, float(s)) for s in range(1, 5)] + \
        [(s, 100.0 + s) for s in range(5, 11)]


def test_a_run_that_crashed_before_its_first_checkpoint_starts_its_log_afresh(tmp_path):
    crashed = MetricsLogger(str(tmp_path), True, 0, 10, progress=False)
    crashed.log_eval(0, {"recovered": -1.0})
    crashed.log(1, {"loss": 1.0})
    crashed.close()
    again = MetricsLogger(str(tmp_path), True, 0, 10, progress=False)  # no checkpoint: from step 0, evaluation too
    again.log_eval(0, {"recovered": -0.5})
    again.log(1, {"loss": 2.0})
    again.close()
    assert again.superseded == 2 and [r["step"] for r in _rows(tmp_path / "metrics.jsonl")] == [0, 1]
    assert _scalars(tmp_path / "tensorboard", "eval/recovered") == [(0, -0.5)]
    assert _scalars(tmp_path / "tensorboard", "loss") == [(1, 2.0)]


def test_a_run_resumed_where_it_stopped_moves_nothing(tmp_path):
    log = MetricsLogger(str(tmp_path), True, 0, 3, progress=False)
    log.log(1, {"loss": 1.0})
    log.close()
    again = MetricsLogger(str(tmp_path), True, 1, 3, progress=False)  # resumed exactly where it stopped
    assert again.superseded == 0 and not (tmp_path / "metrics.superseded.jsonl").exists()
    again.close()
