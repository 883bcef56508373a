"""User callbacks in real (tiny) runs: what a `detector.Callback` and the logs show it, with
``eval.async`` off and on, after ``--resume``, and listed in the YAML config."""

import csv
import json
import math
import os
import textwrap

import pytest

import detector
from detector.cli.train import train_main
from detector.config.schema import load_config
from detector.engine.run import run
from tests.helpers.data import TINY_MODEL

TINY = [*TINY_MODEL, "data.batch_size=8", "model.num_anchors=2", "train.max_minutes=0"]


class Recorder(detector.Callback):
    """Every event it receives, in order."""

    def __init__(self):
        super().__init__()
        self.events = []

    def on_epoch_end(self, epoch, logs=None):
        self.events.append(("epoch_end", epoch, logs["AP"], logs["lr"]))

    def on_eval_end(self, epoch, metrics, is_best):
        self.events.append(("eval_end", epoch, metrics["AP"], is_best))

    def on_checkpoint(self, path, kind):
        self.events.append(("checkpoint", kind, os.path.basename(path), os.path.isfile(path)))

    def on_run_end(self, result):
        self.events.append(("run_end", result))

    def of(self, kind):
        return [event[1:] for event in self.events if event[0] == kind]


def config(tiny_spec, run_dir, *overrides):
    return load_config(
        overrides=[*TINY, f"data.spec={tiny_spec}", f"train.run_dir={run_dir}", *overrides]
    )


def csv_rows(run_dir) -> list[dict]:
    with open(run_dir / "metrics.csv") as f:
        return list(csv.DictReader(f))


def same(a: float, b) -> bool:
    """`a` (a float, NaN for no value) equals a metrics.csv cell `b` (str) or float."""
    b = float(b) if b != "" else math.nan
    return (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, rel=1e-6)


def check_events(recorder: Recorder, run_dir, epochs: list[int], evaluated: list[int]):
    """The recorder saw `epochs` (0-based) end, each once, in order, with the AP of
    metrics.csv; `evaluated` among them reached ``on_eval_end`` once each, in order,
    before their ``on_epoch_end``; every checkpoint event names a written file."""
    rows = {int(r["epoch"]) - 1: r for r in csv_rows(run_dir)}
    ends = recorder.of("epoch_end")
    assert [e for e, *_ in ends] == epochs
    assert all(same(ap, rows[e]["AP"]) and same(lr, rows[e]["lr"]) for e, ap, lr in ends)
    evals = recorder.of("eval_end")
    assert [e for e, *_ in evals] == evaluated
    assert all(same(ap, rows[e]["AP"]) and not math.isnan(ap) for e, ap, _ in evals)
    assert [e for e, ap, _ in ends if not math.isnan(ap)] == evaluated
    order = [(kind, event[0]) for kind, *event in recorder.events if kind != "checkpoint"]
    for epoch in evaluated:  # its evaluation is known before its logs are
        assert order.index(("eval_end", epoch)) < order.index(("epoch_end", epoch))
    checkpoints = recorder.of("checkpoint")
    assert [c for c in checkpoints if c[0] == "last"] == [("last", "last.keras", True)] * len(
        epochs
    )
    best = [c for c in checkpoints if c[0] == "best"]
    assert best == [("best", "best.keras", True)] * sum(is_best for *_, is_best in evals)
    best_json = json.loads((run_dir / "best.json").read_text())
    last_best = [e for e, _, is_best in evals if is_best]
    if last_best:
        assert best_json["epoch"] == last_best[-1] + 1


@pytest.mark.parametrize("eval_async", [False, True])
def test_a_user_callback_sees_every_epochs_ap_once_in_order(tiny_spec, tmp_path, eval_async):
    run_dir = tmp_path / "run"
    cfg = config(tiny_spec, run_dir, "train.epochs=3", "eval.every=2", f"eval.async={eval_async}")
    recorder = Recorder()
    returned = run(cfg, callbacks=[recorder])
    check_events(recorder, run_dir, [0, 1, 2], evaluated=[1, 2])  # every 2nd, and the last
    (result,) = recorder.of("run_end")
    result = result[0]
    assert recorder.events[-1][0] == "run_end"
    assert result == returned  # what run() returns is what on_run_end received
    assert result.run_dir == str(run_dir) and result.best_metrics["AP"] >= 0
    assert result.best_path == str(run_dir / "best.keras") and os.path.isfile(result.last_path)
    rows = csv_rows(run_dir)
    assert [h["epoch"] for h in result.history] == [1, 2, 3]
    assert all(same(h["AP"], r["AP"]) for h, r in zip(result.history, rows, strict=True))


def test_after_resume_a_user_callback_sees_the_resumed_epochs_only(tiny_spec, tmp_path):
    run_dir = tmp_path / "run"
    first = Recorder()
    run(config(tiny_spec, run_dir, "train.epochs=2", "eval.async=true"), callbacks=[first])
    check_events(first, run_dir, [0, 1], evaluated=[0, 1])
    resumed = Recorder()
    again = load_config(run_dir / "config.yaml", ["train.epochs=4"])  # as --resume does
    run(again, resume=True, callbacks=[resumed])
    check_events(resumed, run_dir, [2, 3], evaluated=[2, 3])  # numbering goes on
    (result,) = resumed.of("run_end")
    assert [h["epoch"] for h in result[0].history] == [1, 2, 3, 4]  # the whole run


MODULE = """
    import json

    import detector


    class Events(detector.Callback):
        def __init__(self, out, tag="x"):
            super().__init__()
            self.out, self.tag = out, tag

        def write(self, *event):
            with open(self.out, "a") as f:
                f.write(json.dumps([self.tag, *event]) + "\\n")

        def on_epoch_end(self, epoch, logs=None):
            self.write("epoch_end", epoch, logs["AP"])

        def on_eval_end(self, epoch, metrics, is_best):
            self.write("eval_end", epoch, metrics["AP"], is_best)

        def on_run_end(self, result):
            self.write("run_end", len(result.history))
"""


def test_a_callback_listed_in_the_yaml_receives_events(tiny_spec, tmp_path, monkeypatch):
    (tmp_path / "my_hooks.py").write_text(textwrap.dedent(MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "events.jsonl"
    (tmp_path / "exp.yaml").write_text(
        "train:\n"
        "  epochs: 2\n"
        "  callbacks:\n"
        f"    - {{class: 'my_hooks:Events', args: {{out: '{out}', tag: yaml}}}}\n"
    )
    run_dir = tmp_path / "run"
    cfg = load_config(
        tmp_path / "exp.yaml", [*TINY, f"data.spec={tiny_spec}", f"train.run_dir={run_dir}"]
    )
    run(cfg)
    events = [json.loads(line) for line in out.read_text().splitlines()]
    assert {e[0] for e in events} == {"yaml"}  # the args reached the constructor
    aps = [float(r["AP"]) for r in csv_rows(run_dir)]
    assert [e[1:] for e in events if e[1] == "epoch_end"] == [
        ["epoch_end", i, pytest.approx(ap)] for i, ap in enumerate(aps)
    ]
    assert [e[1:3] for e in events if e[1] == "eval_end"] == [["eval_end", 0], ["eval_end", 1]]
    assert events[-1][1:] == ["run_end", 2]
    assert "my_hooks:Events" in (run_dir / "config.yaml").read_text()  # kept for --resume


@pytest.mark.parametrize(
    "entry, message",
    [
        ("no_such_module_x.sub:Hook", "cannot import 'no_such_module_x.sub:Hook': No module"),
        ("json:NoSuchHook", "cannot import 'json:NoSuchHook': module 'json' has no attribute"),
        ("json:JSONDecoder", "'json:JSONDecoder' is not a keras.callbacks.Callback class"),
        (
            "{class: 'keras.callbacks:EarlyStopping', args: {nope: 1}}",
            "cannot create 'keras.callbacks:EarlyStopping' with args {'nope': 1}: TypeError",
        ),
    ],
)
def test_a_bad_entry_is_one_error_line_naming_it(tiny_spec, tmp_path, capsys, entry, message):
    code = train_main(
        [
            "--data",
            str(tiny_spec),
            "--run-dir",
            str(tmp_path / "run"),
            "--set",
            f"train.callbacks=['keras.callbacks:History', {entry}]",
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith(f"error: train.callbacks[1]: {message}")
    assert not (tmp_path / "run").exists()  # before anything was written
