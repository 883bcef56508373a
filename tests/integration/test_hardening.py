"""Hostile or broken input: results files for ``evaluate.py --detections``, YAML alias
bombs and oversized files as configs and dataset specs, and the run-directory lock."""

import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from detector.cli.train import evaluate_main, train_main
from detector.config.schema import load_config
from detector.data.spec import load_spec
from detector.evaluation.results_file import clean_results, skipped_line
from detector.utils.atomic import _create_temporary
from detector.utils.runlock import claim_run_dir, clean_temporaries, run_lock
from detector.utils.safe_yaml import MAX_BYTES

ROOT = Path(__file__).resolve().parents[2]
TRUTH = [  # (image_id, category_id, bbox xywh)
    (7, 3, [10.0, 10.0, 40.0, 30.0]),
    (9, 11, [50.0, 20.0, 30.0, 50.0]),
]


def coco_spec(tmp_path: Path) -> Path:
    """A COCO ground truth of two images, one box each (categories 3 and 11), and its spec."""
    gt = {
        "images": [{"id": i, "file_name": f"{i}.jpg", "width": 100, "height": 80} for i in (7, 9)],
        "categories": [{"id": 3, "name": "cat"}, {"id": 11, "name": "dog"}],
        "annotations": [
            {"id": n, "image_id": i, "category_id": c, "bbox": b, "area": b[2] * b[3], "iscrowd": 0}
            for n, (i, c, b) in enumerate(TRUTH, start=1)
        ],
    }
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"format: coco\nval: {{images: {tmp_path}, annotations: gt.json}}\n")
    return spec


def perfect() -> list[dict]:
    return [{"image_id": i, "category_id": c, "bbox": list(b), "score": 0.9} for i, c, b in TRUTH]


def evaluate(tmp_path: Path, results, capsys, name="results.json") -> tuple[int, dict, str]:
    """`evaluate.py --detections` on `results` (a list, or the file's text); returns
    (exit status, the --json metrics or {}, stderr)."""
    path, out = tmp_path / name, tmp_path / "metrics.json"
    text = results if isinstance(results, str) else json.dumps(results)
    path.write_text(text)
    argv = ["--detections", str(path), "--data", str(coco_spec(tmp_path)), "--json", str(out)]
    status = evaluate_main(argv)
    metrics = json.loads(out.read_text()) if out.exists() else {}
    return status, metrics, capsys.readouterr().err


def test_the_perfect_results_score_ap_1(tmp_path, capsys):
    status, metrics, err = evaluate(tmp_path, perfect(), capsys)
    assert status == 0 and metrics["AP"] == pytest.approx(1.0) and err == ""


@pytest.mark.parametrize(
    "poison, reason",
    [
        ({"score": math.nan}, "2 non-finite score"),
        ({"bbox": [math.nan] * 4}, "2 non-finite bbox"),
        ({"score": math.nan, "bbox": [math.nan] * 4}, "2 non-finite score"),
    ],
)
def test_nan_results_equal_to_the_truth_do_not_score(tmp_path, capsys, poison, reason):
    status, metrics, err = evaluate(tmp_path, [dict(r, **poison) for r in perfect()], capsys)
    assert status == 0 and metrics["AP"] == 0.0 and metrics["AP50"] == 0.0
    assert err.strip().endswith(f"2 entries skipped: {reason}")
    assert len(err.strip().splitlines()) == 1


def test_skipped_entries_are_counted_by_reason_on_one_line(tmp_path, capsys):
    results = perfect() + [
        dict(perfect()[0], image_id=8),
        dict(perfect()[1], image_id=1234),
        dict(perfect()[0], score=math.inf),
    ]
    status, metrics, err = evaluate(tmp_path, results, capsys)
    path = tmp_path / "results.json"
    expected = f"--detections {path}: 3 entries skipped: 2 unknown image_id, 1 non-finite score"
    assert status == 0 and err == f"warning: {expected}\n"
    assert metrics["AP"] == pytest.approx(1.0)  # the two valid entries are still scored


@pytest.mark.parametrize(
    "change, reason",
    [
        ({"category_id": 4}, "unknown category_id"),
        ({"image_id": 7.5}, "unknown image_id"),
        ({"image_id": math.nan}, "non-finite image_id"),
        ({"category_id": 10**400}, "non-finite category_id"),
        ({"score": "0.9"}, "non-numeric score"),
        ({"score": True}, "non-numeric score"),
        ({"bbox": [1, 2, 3]}, "bbox not 4 numbers"),
        ({"bbox": [1, 2, 3, None]}, "bbox not 4 numbers"),
        ({"bbox": "1 2 3 4"}, "bbox not 4 numbers"),
        ({"bbox": [1, 2, -math.inf, 4]}, "non-finite bbox"),
        ({"bbox": [1, 2, 0, 4]}, "bbox width/height <= 0"),
        ({"bbox": [1, 2, 3, -4]}, "bbox width/height <= 0"),
    ],
)
def test_each_unscorable_entry_is_skipped_with_its_reason(change, reason):
    entry = dict(perfect()[0], **change)
    kept, skipped = clean_results([entry, perfect()[1]], [7, 9], [3, 11])
    assert dict(skipped) == {reason: 1} and kept == [perfect()[1]]
    assert skipped_line("r.json", skipped) == f"--detections r.json: 1 entry skipped: 1 {reason}"


@pytest.mark.parametrize("key", ["image_id", "category_id", "bbox", "score"])
def test_an_entry_missing_a_key_is_skipped(key):
    entry = {k: v for k, v in perfect()[0].items() if k != key}
    kept, skipped = clean_results([entry], [7, 9], [3, 11])
    assert kept == [] and dict(skipped) == {f"missing {key}": 1}


def test_kept_entries_are_plain_copies():
    entry = dict(perfect()[0], image_id=7.0, segmentation=[[1, 2, 3]], bbox=[10, 10, 40, 30])
    kept, skipped = clean_results([entry], [7], [3])
    assert not skipped and kept == [perfect()[0]] and type(kept[0]["image_id"]) is int
    assert skipped_line("r.json", skipped) is None


@pytest.mark.parametrize(
    "text, what",
    [
        ("image_id,category_id\n7,3\n", "not a JSON file"),
        ("", "not a JSON file"),
        ("[" * 100_000 + "]" * 100_000, "not a JSON file"),
        ('{"annotations": []}', "expected a JSON list of COCO results, got an object"),
        ("[1, 2, 3]", "entry 0 is a number"),
        (json.dumps(perfect() + [[7, 3]]), "entry 2 is a list"),
        ('"results"', "got a string"),
    ],
)
def test_a_results_file_of_the_wrong_shape_is_one_error_line(tmp_path, capsys, text, what):
    status, metrics, err = evaluate(tmp_path, text, capsys)
    assert status == 2 and metrics == {}
    assert err.startswith("error: --detections: ") and err.count("\n") == 1
    assert what in err and str(tmp_path / "results.json") in err


def test_a_missing_results_file_is_one_error_line(tmp_path, capsys):
    spec = coco_spec(tmp_path)
    assert evaluate_main(["--detections", str(tmp_path / "no.json"), "--data", str(spec)]) == 2
    assert capsys.readouterr().err == f"error: --detections: file not found: {tmp_path}/no.json\n"


# A "billion laughs": nine levels of nine aliases, ~10^9 values once expanded.
_LEVELS = ["&a [1,1,1,1,1,1,1,1,1]"] + [
    f"&{c} [{','.join([f'*{p}'] * 9)}]" for p, c in zip("abcdefgh", "bcdefghi", strict=True)
]
BOMB = "[" + ", ".join(_LEVELS) + "]"


def refused_quickly(call) -> str:
    """The message of the ValueError `call()` raises, checked to come in < 2 s and to be
    short (no expanded value in it)."""
    start = time.monotonic()
    with pytest.raises(ValueError) as info:
        call()
    assert time.monotonic() - start < 2.0
    message = str(info.value)
    assert len(message) < 500 and "1, 1, 1" not in message
    return message


def test_an_alias_bomb_config_is_refused(tmp_path, capsys):
    path = tmp_path / "bomb.yaml"
    path.write_text(f"model:\n  anchors: {BOMB}\n")
    assert len(path.read_bytes()) < 400
    message = refused_quickly(lambda: load_config(str(path)))
    # the file and the key where the bomb sits (its 6th list, the first over the cap)
    assert message.startswith(f"{path}: model.anchors[5]: refused: aliases expand it beyond")
    assert train_main(["--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and len(err) < 500
    assert f"{path}: model.anchors[5]: refused" in err


def test_an_alias_bomb_override_is_refused():
    message = refused_quickly(lambda: load_config(None, [f"model.anchors={BOMB}"]))
    assert message.startswith("override 'model.anchors=")
    assert ": value: [5]: refused: aliases expand it beyond" in message


@pytest.mark.parametrize(
    "text, key",
    [
        (
            f"format: synthetic\nsynthetic: {{classes: {BOMB}}}\ntrain: {{images: i}}\n",
            "synthetic.classes[5]",
        ),
        (f"format: yolo\nnames: {BOMB}\ntrain: {{images: i, labels: l}}\n", "names[5]"),
        (f"path: .\ntrain: .\nnames: {BOMB}\n", "names[5]"),  # Ultralytics
        (f"format: coco\ndefs: {BOMB}\nnames: [*i, *i]\n", "defs[5]"),  # where it is built
        (f"format: coco\n? {BOMB}\n: 1\n", "?(key)[5]"),  # a bomb as a mapping key
    ],
)
def test_an_alias_bomb_spec_is_refused_naming_the_key(tmp_path, text, key):
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    message = refused_quickly(lambda: load_spec(str(path)))
    assert message.startswith(f"{path}: {key}: refused: aliases expand it beyond")


def test_a_recursive_alias_is_refused(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text("format: coco\nnames: &n [a, *n]\n")
    message = refused_quickly(lambda: load_spec(str(path)))
    assert message == f"{path}: names[1]: refused: an alias refers to a node that contains it"


def test_files_over_the_size_cap_are_refused_unread(tmp_path):
    path = tmp_path / "big.yaml"
    path.write_text("# padding\n" * (MAX_BYTES // 10 + 1))
    size = path.stat().st_size
    for call, what in ((load_config, "config file"), (load_spec, "dataset spec")):
        message = refused_quickly(lambda call=call: call(str(path)))
        assert message == f"{path}: {what} too large ({size} bytes; at most {MAX_BYTES})"


def test_config_messages_shorten_long_values(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text(f"train:\n  epochs: {'x' * 100_000}\n")
    assert "expected int, got 'xxx" in refused_quickly(lambda: load_config(str(path)))
    path.write_text(f"model:\n  variant: {'y' * 100_000}\n")
    assert "must be one of ['darknet19', 'tiny'], got 'yyy" in refused_quickly(
        lambda: load_config(str(path))
    )


SECRET = "sk-live-7f3a9c2e1b8d4f60"


@pytest.mark.parametrize(
    "content",
    [
        f"api_key: {SECRET}: x\n",  # not YAML: the parser's error would quote the line
        f"[{SECRET}\n",
        f"token: {SECRET}\n",  # YAML, without names
        f"{SECRET}\nsecond line\n",  # plain text
        f"names: {SECRET}\n",
        f"names: {{{SECRET}: a}}\n",
    ],
)
def test_a_names_file_that_is_not_names_yaml_is_not_echoed(tmp_path, content):
    (tmp_path / "secrets.env").write_text(content)
    spec = tmp_path / "spec.yaml"
    spec.write_text("format: yolo\nnames: secrets.env\ntrain: {images: i, labels: l}\n")
    with pytest.raises(ValueError) as info:
        load_spec(str(spec))
    message = str(info.value)
    assert message.startswith(f"{tmp_path / 'secrets.env'}: ") and SECRET not in message


def test_a_yaml_syntax_error_names_the_line_not_its_text(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text(f"train:\n  lr: 0.1\n  password: {SECRET}: x\n")
    message = refused_quickly(lambda: load_config(str(path)))
    assert message.startswith(f"{path}: not valid YAML: ") and "line 3" in message
    assert SECRET not in message


# The lock holder runs as a separate process; it loads detector/utils/runlock.py by path
# (importing the package would start TensorFlow: seconds per process).
HOLDER = """
import importlib.util, sys, time
spec = importlib.util.spec_from_file_location("runlock", sys.argv[1])
runlock = importlib.util.module_from_spec(spec)
spec.loader.exec_module(runlock)
with runlock.run_lock(sys.argv[2]):
    print("locked", flush=True)
    time.sleep(float(sys.argv[3]))
"""


@contextlib.contextmanager
def holder(run_dir: Path, seconds: float):
    """A process holding `run_dir`'s lock for `seconds`, once it says so."""
    script = [sys.executable, "-c", HOLDER, str(ROOT / "detector" / "utils" / "runlock.py")]
    proc = subprocess.Popen([*script, str(run_dir), str(seconds)], stdout=subprocess.PIPE)
    try:
        assert proc.stdout.readline() == b"locked\n"
        yield proc
    finally:
        proc.kill()
        proc.wait(timeout=10)
        proc.stdout.close()


def test_a_held_run_directory_is_refused_naming_the_holder(tmp_path):
    run_dir = tmp_path / "run"
    with holder(run_dir, 60) as proc:
        with pytest.raises(ValueError) as info, run_lock(str(run_dir)):
            pass
        assert str(info.value) == (
            f"run directory {run_dir} is in use by process {proc.pid} (another training "
            "or --resume); wait for it or pass another --run-dir"
        )
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    with run_lock(str(run_dir)):  # the kernel released the killed holder's lock
        assert (run_dir / ".lock").read_text() == f"{os.getpid()}\n"


def test_the_lock_is_released_when_the_holder_exits(tmp_path):
    run_dir = tmp_path / "run"
    with holder(run_dir, 0) as proc:
        assert proc.wait(timeout=10) == 0
    with run_lock(str(run_dir)):
        pass


def test_the_lock_excludes_a_second_holder_in_the_same_process(tmp_path):
    run_dir = str(tmp_path / "run")
    with run_lock(run_dir):
        with pytest.raises(ValueError, match=f"in use by process {os.getpid()} "):
            with run_lock(run_dir):
                pass
    with run_lock(run_dir):  # released by the first block's exit
        pass
    assert (tmp_path / "run" / ".lock").read_text() == ""


def test_claim_run_dir_skips_used_and_held_directories(tmp_path):
    base = tmp_path / "run"
    (tmp_path / "run-2").mkdir()
    (tmp_path / "run-2" / "config.yaml").write_text("{}")
    (tmp_path / "run-3").write_text("a file")
    with holder(base, 60), contextlib.ExitStack() as stack:  # held, still empty
        assert claim_run_dir(str(base), stack) == f"{base}-4"
        assert claim_run_dir(str(base), stack) == f"{base}-5"  # -4 is ours now
        with pytest.raises(ValueError, match="in use"), run_lock(f"{base}-4"):
            pass
    with contextlib.ExitStack() as stack:  # released: `base` holds only its lock file
        assert claim_run_dir(str(base), stack) == str(base)


def test_clean_temporaries_removes_only_the_atomic_writers_files(tmp_path):
    run_dir = tmp_path / "run"
    kept = ["config.yaml", "best.keras", ".lock", ".hidden", "state/latest.weights.h5"]
    kept += ["state/.x.0123456789abcdeg", "notes.0123456789abcdef"]
    for name in kept:
        (run_dir / name).parent.mkdir(parents=True, exist_ok=True)
        (run_dir / name).write_text("keep")
    left = [
        _create_temporary(str(run_dir / "best.keras"), ".keras"),
        _create_temporary(str(run_dir / "metrics.csv"), ""),
        _create_temporary(str(run_dir / "state" / "latest.weights.h5"), ".weights.h5"),
        _create_temporary(str(run_dir / "state" / "meta.json"), ""),
    ]
    assert all(os.path.isfile(p) for p in left)
    assert clean_temporaries(str(run_dir)) == 4
    assert not any(os.path.exists(p) for p in left)
    assert all((run_dir / name).read_text() == "keep" for name in kept)
    assert clean_temporaries(str(tmp_path / "absent")) == 0


# --- review fixes: damaged checkpoints, unusable run directories, mismatched splits ------


def test_a_damaged_keras_file_is_a_value_error_naming_it(tmp_path):
    from detector.inference.detector import Detector

    path = tmp_path / "best.keras"
    path.write_bytes(b"not a zip archive")
    with pytest.raises(ValueError, match=r"best\.keras: not a loadable \.keras checkpoint"):
        Detector.load(str(path))


def test_a_run_directory_that_cannot_be_made_is_a_value_error(tmp_path):
    from detector.utils.runlock import run_lock

    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ValueError, match="cannot create it"), run_lock(str(blocker / "run")):
        pass


def test_train_and_val_with_different_classes_are_refused(monkeypatch):
    import detector.engine.run as training
    from detector.data.records import Dataset

    splits = {
        "train": Dataset([], ["cat", "dog"], [1, 2], None),
        "val": Dataset([], ["dog", "cat"], [2, 1], None),
    }
    monkeypatch.setattr(training, "load_dataset", lambda spec, split, **_: splits[split])
    with pytest.raises(ValueError, match="different classes"):
        training.read_splits("spec.yaml")
