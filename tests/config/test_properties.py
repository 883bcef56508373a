"""Property tests: random and mutated input files end in a result or in one `ValueError`
whose message names the file or the key, never another exception type, never a hang.

Covered: the config loader (file and ``--set`` overrides), the dataset spec (ours,
Ultralytics', darknet's obj.data), the COCO, VOC and YOLO readers, and the results reader.
Each example has a 2 s deadline; the whole file runs in well under a minute.
"""

import json
import math
import os
import string

import cv2
import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from detector.config.schema import config_to_dict, load_config
from detector.data.coco import read_coco
from detector.data.spec import SPEC_KEYS, load_spec
from detector.data.voc import read_voc
from detector.data.yolo import read_yolo
from detector.evaluation.results_file import clean_results, read_results

SETTINGS = settings(
    max_examples=60,
    deadline=2000,
    database=None,  # no .hypothesis folder in the working tree
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
MAX_MESSAGE = 600

# Numbers that break readers: huge, tiny, negative, non-finite, integers beyond float64.
NUMBERS = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, -1, 10**400, -(10**400), 2**63, 2**64 + 1]),
    st.floats(allow_nan=True, allow_infinity=True),
)
TEXT = st.text(st.characters(codec="utf-8"), max_size=20) | st.sampled_from(
    ["", "\x00", "a\x00b", "é漢字🙂", "nan", "inf", "-1", "1e400", "../../etc/passwd"]
)
SCALARS = st.one_of(st.none(), st.booleans(), NUMBERS, TEXT)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
    max_leaves=12,
)


def ends_well(call, *names: str):
    """Runs `call`; a ValueError must be short and name one of `names`."""
    try:
        return call()
    except ValueError as error:
        message = str(error)
        assert len(message) < MAX_MESSAGE, message[:200]
        assert any(name in message for name in names), message[:300]
        return None


def mutate(data, draw, values=None):
    """`data` (nested dicts/lists) with one element, reached by a random path, deleted or
    replaced (numbers drawn most often); rarely the whole value replaced."""
    values = st.one_of(NUMBERS, SCALARS, VALUES) if values is None else values
    if not isinstance(data, dict | list) or not data or draw(st.integers(0, 7)) == 0:
        return draw(values)
    keys = list(data) if isinstance(data, dict) else list(range(len(data)))
    key = draw(st.sampled_from(keys))
    copy = dict(data) if isinstance(data, dict) else list(data)
    action = draw(st.sampled_from(["delete", "replace", "descend", "descend"]))
    if action == "delete":
        del copy[key]
    elif action == "replace":
        copy[key] = draw(values)
    else:
        copy[key] = mutate(copy[key], draw, values)
    return copy


def write_text_or_bytes(path: str, content) -> None:
    mode = "wb" if isinstance(content, bytes) else "w"
    with open(path, mode, **({} if mode == "wb" else {"encoding": "utf-8"})) as f:
        f.write(content)


def dump_yaml(value) -> str:
    try:
        return yaml.safe_dump(value, allow_unicode=True)
    except (yaml.YAMLError, OverflowError):
        return repr(value)


# ---------------------------------------------------------------- config


CONFIG_KEYS = [f"{s}.{k}" for s, keys in config_to_dict(load_config()).items() for k in keys]


@SETTINGS
@given(data=st.data())
def test_config_file_random_and_mutated(tmp_path, data):
    mutated = mutate(config_to_dict(load_config()), data.draw)
    content = data.draw(
        st.one_of(
            st.builds(dump_yaml, VALUES),
            st.just(dump_yaml(mutated)),
            st.binary(max_size=200),
            TEXT,
        )
    )
    path = str(tmp_path / "config.yaml")
    write_text_or_bytes(path, content)
    ends_well(lambda: load_config(path), path, "config key", "config section")


@SETTINGS
@given(
    key=st.sampled_from(CONFIG_KEYS) | TEXT,
    value=st.one_of(NUMBERS.map(str), TEXT, st.builds(dump_yaml, VALUES)),
)
def test_config_overrides_random_values(key, value):
    text = f"{key}={value}"
    ends_well(lambda: load_config(overrides=[text]), "config key", "override", "malformed")


# ---------------------------------------------------------------- dataset spec


SPEC_KEY_NAMES = st.sampled_from([*SPEC_KEYS, "path", "nc", "classes", "valid", "images"])


@SETTINGS
@given(data=st.data())
def test_dataset_spec_random_and_mutated(tmp_path, data):
    valid = {
        "format": data.draw(st.sampled_from(["coco", "voc", "yolo", "synthetic", "tfrecord"])),
        "names": ["a", "b"],
        "train": {"images": "images", "annotations": "a.json", "labels": "labels"},
        "val": {"images": "images", "annotations": "a.json"},
    }
    content = data.draw(
        st.one_of(
            st.builds(dump_yaml, st.dictionaries(SPEC_KEY_NAMES, VALUES, max_size=5)),
            st.just(dump_yaml(mutate(valid, data.draw))),
            st.builds(
                lambda pairs: "\n".join(f"{k} = {v}" for k, v in pairs),
                st.lists(st.tuples(SPEC_KEY_NAMES, TEXT), max_size=4),
            ),
            st.binary(max_size=200),
        )
    )
    path = str(tmp_path / "spec.yaml")
    write_text_or_bytes(path, content)
    spec = ends_well(lambda: load_spec(path), path)
    assert spec is None or spec["path"] == os.path.abspath(path)


# ---------------------------------------------------------------- COCO json

VALID_COCO = {
    "images": [
        {"id": 1, "file_name": "a.jpg", "width": 40, "height": 30},
        {"id": 2, "file_name": "b.jpg", "width": 20, "height": 20},
    ],
    "annotations": [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 2, 10, 10], "iscrowd": 0},
        {"id": 2, "image_id": 2, "category_id": 2, "bbox": [0, 0, 5, 5], "iscrowd": 1},
    ],
    "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
}


@SETTINGS
@given(data=st.data())
def test_coco_reader_random_and_mutated(tmp_path, data):
    mutated = VALID_COCO
    for _ in range(data.draw(st.integers(1, 3))):
        mutated = mutate(mutated, data.draw)
    content = data.draw(
        st.one_of(
            st.builds(lambda v: json.dumps(v, allow_nan=True), st.just(mutated)),
            st.builds(lambda v: json.dumps(v, allow_nan=True), VALUES),
            st.binary(max_size=200),
        )
    )
    path = str(tmp_path / "instances.json")
    write_text_or_bytes(path, content)
    dataset = ends_well(lambda: read_coco(path, str(tmp_path)), path)
    if dataset is not None:
        for record in dataset.records:
            assert record.height > 0 and record.width > 0
            assert np.isfinite(record.boxes).all() and np.isfinite(record.ignore).all()
            assert ((record.classes >= 0) & (record.classes < len(dataset.names))).all()


# ---------------------------------------------------------------- VOC xml and YOLO txt


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    cv2.imwrite(str(root / "a.jpg"), np.zeros((30, 40, 3), np.uint8))
    return root


XML_TEMPLATE = (
    "<annotation><filename>{filename}</filename><size><width>{width}</width>"
    "<height>{height}</height></size><object><name>{name}</name><difficult>{difficult}"
    "</difficult><bndbox><xmin>{xmin}</xmin><ymin>{ymin}</ymin><xmax>{xmax}</xmax>"
    "<ymax>{ymax}</ymax></bndbox></object></annotation>"
)
XML_VALUES = st.one_of(
    st.sampled_from(["a.jpg", "a", "b", "1", "10", "40", "0"]),
    NUMBERS.map(str),
    st.text(st.sampled_from(string.printable + "é\x00"), max_size=8),
)


@SETTINGS
@given(data=st.data())
def test_voc_reader_random_and_mutated(image_folder, tmp_path_factory, data):
    fields = ["filename", "width", "height", "name", "difficult", "xmin", "ymin", "xmax", "ymax"]
    values = dict(zip(fields, ["a.jpg", 40, 30, "a", 0, 2, 3, 20, 25], strict=True))
    for key in data.draw(st.lists(st.sampled_from(fields), max_size=4)):
        values[key] = data.draw(XML_VALUES)
    text = XML_TEMPLATE.format(**values)
    content = data.draw(
        st.one_of(
            st.just(text),
            st.builds(lambda cut: text[:cut], st.integers(0, len(text))),
            st.binary(max_size=200),
        )
    )
    xml_dir = tmp_path_factory.mktemp("xml")
    write_text_or_bytes(str(xml_dir / "a.xml"), content)
    dataset = ends_well(lambda: read_voc(str(image_folder), str(xml_dir), ["a", "b"]), "a.xml")
    assert dataset is not None  # nothing in one xml is worth refusing the split
    for record in dataset.records:
        assert np.isfinite(record.boxes).all() and record.height > 0 and record.width > 0


YOLO_FIELD = st.one_of(
    NUMBERS.map(str),
    st.sampled_from(["0", "1", "0.5", "nan", "inf", "-inf", "1e400", "0x10", "1_0"]),
    st.text(st.sampled_from(string.printable + "é\x00"), max_size=6),
)


@SETTINGS
@given(data=st.data())
def test_yolo_reader_random_label_lines(image_folder, tmp_path_factory, data):
    lines = data.draw(st.lists(st.lists(YOLO_FIELD, max_size=9).map(" ".join), max_size=5))
    content = data.draw(st.one_of(st.just("\n".join(lines)), st.binary(max_size=200)))
    labels = tmp_path_factory.mktemp("labels")
    write_text_or_bytes(str(labels / "a.txt"), content)
    dataset = read_yolo(str(image_folder), str(labels), ["a", "b"])
    assert len(dataset.records) == 1
    record = dataset.records[0]
    assert np.isfinite(record.boxes).all()
    assert (record.boxes[:, [0, 2]] <= 40).all() and (record.boxes[:, [1, 3]] <= 30).all()
    assert ((record.classes >= 0) & (record.classes < 2)).all()


# ---------------------------------------------------------------- results (--detections)

VALID_RESULT = {"image_id": 1, "category_id": 1, "bbox": [1.0, 2.0, 3.0, 4.0], "score": 0.5}


@SETTINGS
@given(data=st.data())
def test_results_reader_random_and_mutated(tmp_path, data):
    entries = [mutate(VALID_RESULT, data.draw) for _ in range(data.draw(st.integers(0, 3)))]
    content = data.draw(
        st.one_of(
            st.builds(lambda v: json.dumps(v, allow_nan=True), st.just(entries)),
            st.builds(lambda v: json.dumps(v, allow_nan=True), VALUES),
            st.binary(max_size=200),
        )
    )
    path = str(tmp_path / "results.json")
    write_text_or_bytes(path, content)
    read = ends_well(lambda: read_results(path), path)
    if read is None:
        return
    kept, skipped = clean_results(read, [1, 2], [1])
    assert len(kept) + sum(skipped.values()) == len(read)
    for entry in kept:
        assert all(math.isfinite(v) for v in [*entry["bbox"], entry["score"]])
        assert entry["bbox"][2] > 0 and entry["bbox"][3] > 0
        assert entry["image_id"] in (1, 2) and entry["category_id"] == 1


# ---------------------------------------------------------------- what the properties found

COCO_FOUND = {  # each raised OverflowError before: ids beyond int64, sizes beyond float64
    "image id 2**64": lambda c: c["images"][0].update(id=2**64 + 1),
    "width 10**400": lambda c: c["images"][0].update(width=10**400),
    "width inf": lambda c: c["images"][0].update(width=math.inf),
    "annotation image_id 2**64": lambda c: c["annotations"][0].update(image_id=2**64 + 1),
    "bbox 10**400": lambda c: c["annotations"][0].update(bbox=[10**400, 1, 1, 1]),
}


@pytest.mark.parametrize("name", sorted(COCO_FOUND))
def test_coco_numbers_beyond_int64_or_float64_are_malformed_entries(tmp_path, name):
    data = json.loads(json.dumps(VALID_COCO))
    COCO_FOUND[name](data)
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(data))
    dataset = read_coco(str(path), str(tmp_path))
    assert dataset.problems["annotation_malformed"] == 1
    (example,) = dataset.problems.examples["annotation_malformed"]
    entry = "annotations[0]" if "bbox" in name or "image_id" in name else "images[0]"
    assert example.startswith(f"{path}: {entry}:")
    assert [r.image_id for r in dataset.records] == ([1, 2] if entry == "annotations[0]" else [2])


def test_found_cases_in_voc_yolo_and_config(image_folder, tmp_path):
    xml = tmp_path / "xml"
    xml.mkdir()
    values = dict(filename="a.jpg", width="1e400", height=30, name="a", difficult=0)
    values.update(xmin=2, ymin=3, xmax=20, ymax=25)
    (xml / "a.xml").write_text(XML_TEMPLATE.format(**values))
    record = read_voc(str(image_folder), str(xml), ["a"]).records[0]
    assert (record.height, record.width) == (30, 40)  # an absurd <size>: the header's
    labels = tmp_path / "labels"
    labels.mkdir()
    (labels / "a.txt").write_text("9223372036854775808 0.5 0.5 0.1 0.1\n0 0.5 0.5 1e308 0.1\n")
    dataset = read_yolo(str(image_folder), str(labels), ["a"])
    assert dataset.problems == {"class_unknown": 1, "box_not_finite": 1}
    with pytest.raises(ValueError, match="config key 'train.lr': expected float"):
        load_config(overrides=["train.lr=" + "1" * 400])


# ---------------------------------------------------------------- entry points


def test_entry_points_end_hostile_input_in_one_error_line(tmp_path, capsys):
    from detector.cli.data import main as data_main
    from detector.cli.train import train_main
    from detector.darknet.__main__ import main as darknet_main

    binary = tmp_path / "binary.cfg"
    binary.write_bytes(b"\xff\xfe[net]\x00\n")
    huge = tmp_path / "huge.yaml"
    huge.write_text(
        "format: synthetic\ntrain: {images: i, annotations: a.json}\n"
        "synthetic: {train_images: 100000000000000000000000000000}\n"
    )
    cases = [
        (train_main, ["--set", "data.spec=a\x00b"], "config key 'data.spec': contains a NUL"),
        (train_main, ["--config", str(binary)], f"{binary}: cannot read the config file"),
        (data_main, ["check", str(huge)], "synthetic.train_images: expected at most 1000000"),
        (data_main, ["anchors", str(binary)], f"{binary}: cannot read the dataset spec"),
        (darknet_main, ["layers", str(binary)], f"{binary}: cannot read the cfg"),
    ]
    for main, argv, expected in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and expected in err[0], err
    assert not (tmp_path / "i").exists()  # nothing generated
