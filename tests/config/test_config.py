"""Tests of detector.config.schema: defaults, YAML merge, overrides, type and value checks, round
trip."""

import os
from pathlib import Path

import pytest
import yaml

from detector.config.schema import (
    DEFAULT_CONFIG,
    PUBLISHED_ANCHORS,
    Config,
    EvalConfig,
    config_to_dict,
    load_config,
    save_config,
)


def _write(tmp_path: Path, data: object) -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def test_defaults_load_equal_dataclass_defaults() -> None:
    cfg = load_config()
    assert cfg == Config()
    assert cfg.model.input_size == 320
    assert cfg.data.scale == [0.9, 1.1]
    assert cfg.data.multiscale == [256, 384]
    assert cfg.loss.ignore_thresh == 0.6


def test_the_packaged_default_experiment_is_the_dataclass_defaults() -> None:
    # One source of defaults: the embedded default run (the packaged default.yaml, which
    # configs/default.yaml links to) sets every key it names to its dataclass default.
    assert load_config(DEFAULT_CONFIG) == Config()
    raw = yaml.safe_load(Path(DEFAULT_CONFIG).read_text(encoding="utf-8"))
    assert raw["model"]["variant"] == Config().model.variant == "tiny"
    assert raw["train"]["precision"] == "auto"  # as every other config: the hardware decides
    repo_copy = Path(__file__).resolve().parents[2] / "configs" / "default.yaml"
    assert os.path.samefile(repo_copy, DEFAULT_CONFIG)


def test_defaults_are_not_shared_between_instances() -> None:
    first, second = Config(), Config()
    first.data.scale.append(2.0)
    first.data.multiscale.append(512)
    assert second.data.scale == [0.9, 1.1] and second.data.multiscale == [256, 384]


def test_yaml_merges_over_defaults(tmp_path: Path) -> None:
    path = _write(tmp_path, {"train": {"lr": 0.01, "epochs": 3}, "model": {"variant": "tiny"}})
    cfg = load_config(path)
    assert (cfg.train.lr, cfg.train.epochs, cfg.model.variant) == (0.01, 3, "tiny")
    assert cfg.train.optimizer == "adam"
    assert cfg.data == Config().data


def test_empty_yaml_and_empty_section_give_defaults(tmp_path: Path) -> None:
    empty = tmp_path / "empty.yaml"
    empty.write_text("", encoding="utf-8")
    assert load_config(empty) == Config()
    assert load_config(_write(tmp_path, {"train": None})) == Config()


@pytest.mark.parametrize(
    ("override", "section", "key", "expected"),
    [
        ("eval.every=2", "eval", "every", 2),
        ("train.lr=0.01", "train", "lr", 0.01),
        ("train.lr=1e-3", "train", "lr", 0.001),
        ("train.lr=1", "train", "lr", 1.0),
        ("loss.rescore=false", "loss", "rescore", False),
        ("data.multiscale=[320, 608]", "data", "multiscale", [320, 608]),
        ("data.scale=[0.5, 1.5]", "data", "scale", [0.5, 1.5]),
        ("train.run_dir=2024", "train", "run_dir", "2024"),
        ("train.epochs=2.0", "train", "epochs", 2),
    ],
)
def test_override_parsing(override: str, section: str, key: str, expected: object) -> None:
    value = getattr(getattr(load_config(overrides=[override]), section), key)
    assert value == expected
    assert type(value) is type(expected)


def test_overrides_apply_after_yaml_in_order(tmp_path: Path) -> None:
    path = _write(tmp_path, {"train": {"epochs": 5}})
    cfg = load_config(path, ["train.epochs=7", "train.epochs=9"])
    assert cfg.train.epochs == 9


def test_anchor_list_sets_num_anchors() -> None:
    cfg = load_config(overrides=["model.anchors=[[1,2],[3,4.5]]", "model.num_anchors=9"])
    assert cfg.model.anchors == [[1.0, 2.0], [3.0, 4.5]]
    assert cfg.model.num_anchors == 2


def test_published_anchors_are_resolved() -> None:
    cfg = load_config(overrides=["model.anchors=voc"])
    assert cfg.model.anchors == [list(pair) for pair in PUBLISHED_ANCHORS["voc"]]
    assert cfg.model.num_anchors == 5
    assert load_config().model.anchors == "auto"


@pytest.mark.parametrize(
    ("override", "suggestion"),
    [
        ("train.lrr=0.1", "'train.lr'"),
        ("trian.lr=0.1", "'train.lr'"),
        ("train.batch_size=4", "'eval.batch_size'"),
    ],
)
def test_unknown_key_names_closest_key(override: str, suggestion: str) -> None:
    key = override.split("=")[0]
    with pytest.raises(ValueError, match=f"unknown config key '{key}'") as info:
        load_config(overrides=[override])
    assert f"(did you mean {suggestion}?)" in str(info.value)


def test_unknown_key_without_close_match_lists_valid_keys() -> None:
    with pytest.raises(ValueError, match=r"'eval\.zzzz' \(valid keys: eval\.every, eval\.warmup"):
        load_config(overrides=["eval.zzzz=1"])


def test_unknown_yaml_key_and_section_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"'model\.inputsize' \(did you mean 'model\.input_size'"):
        load_config(_write(tmp_path, {"model": {"inputsize": 320}}))
    with pytest.raises(ValueError, match=r"'evals' \(did you mean 'eval'"):
        load_config(_write(tmp_path, {"evals": {"every": 2}}))


def test_wrong_type_names_key_value_and_type() -> None:
    with pytest.raises(ValueError) as info:
        load_config(overrides=["train.epochs=ten"])
    assert str(info.value) == "config key 'train.epochs': expected int, got 'ten' (str)"


@pytest.mark.parametrize(
    "override",
    ["train.epochs=true", "train.epochs=2.5", "loss.rescore=1", "train.lr=yes", "train.lr=.nan"],
)
def test_wrong_scalar_types_rejected(override: str) -> None:
    key = override.split("=")[0]
    with pytest.raises(ValueError, match=f"config key '{key}': expected"):
        load_config(overrides=[override])


def test_list_elements_and_unions_are_type_checked() -> None:
    with pytest.raises(ValueError, match=r"'data\.multiscale': expected list\[int\]"):
        load_config(overrides=["data.multiscale=[320, big]"])
    with pytest.raises(ValueError, match=r"expected list\[list\[float\]\] \| str, got 5 \(int\)"):
        load_config(overrides=["model.anchors=5"])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.input_size=100", "'model.input_size': must be a positive multiple of 32, got 100"),
        ("model.input_size=0", "'model.input_size'"),
        ("model.width=0", "'model.width': must be > 0, got 0.0"),
        ("model.variant=resnet", "'model.variant': must be one of"),
        ("model.anchors=imagenet", "'model.anchors'"),
        ("model.anchors=[[1,2],[3]]", "'model.anchors'"),
        ("model.anchors=[[1,0]]", "'model.anchors'"),
        ("train.optimizer=rmsprop", "'train.optimizer'"),
        ("train.schedule=linear", "'train.schedule'"),
        ("train.precision=float16", "'train.precision': must be one of"),
        ("data.batch_size=0", "'data.batch_size': must be >= 1, got 0"),
        ("loss.ignore_thresh=1.5", "'loss.ignore_thresh': must be in [0, 1], got 1.5"),
        ("eval.every=0", "'eval.every'"),
        ("data.multiscale=[320]", "'data.multiscale'"),
        ("data.multiscale=[320, 600]", "'data.multiscale'"),
        ("data.multiscale=[608, 320]", "'data.multiscale'"),
        ("data.multiscale=[448, 608]", "must include model.input_size 320"),
        ("loss.class_weights=balanced", "'loss.class_weights': must be 'none', 'auto' or a"),
        ("loss.class_weights=[]", "'loss.class_weights'"),
        ("loss.class_weights=[1, 0]", "'loss.class_weights'"),
        ("loss.class_weights=[1, -2.5]", "'loss.class_weights'"),
        ("loss.class_weights=[1, heavy]", "'loss.class_weights': expected list[float] | str"),
        ("loss.class_weights=null", "'loss.class_weights': expected"),
    ],
)
def test_invalid_values_rejected(override: str, message: str) -> None:
    with pytest.raises(ValueError) as info:
        load_config(overrides=[override])
    assert message in str(info.value)


@pytest.mark.parametrize("override", ["train.lr", "lr=0.1", "a.b.c=1", "train.lr=[1"])
def test_malformed_override_is_named(override: str) -> None:
    with pytest.raises(ValueError, match="override"):
        load_config(overrides=[override])


def test_bad_files_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="config file not found: .*missing.yaml"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ValueError, match="expected a mapping"):
        load_config(_write(tmp_path, [1, 2]))
    with pytest.raises(ValueError, match="config section 'train': expected a mapping"):
        load_config(_write(tmp_path, {"train": 3}))


def test_save_load_round_trip(tmp_path: Path) -> None:
    cfg = load_config(
        overrides=["model.anchors=[[1.5,2],[3,4]]", "train.lr=3e-4", "data.multiscale=[320,608]"]
    )
    path = tmp_path / "run" / "config.yaml"
    save_config(cfg, path)
    assert load_config(path) == cfg
    assert yaml.safe_load(path.read_text(encoding="utf-8")) == config_to_dict(cfg)
    assert [p.name for p in path.parent.iterdir()] == ["config.yaml"]


@pytest.mark.parametrize(
    ("override", "expected"),
    [("none", "none"), ("auto", "auto"), ("[1, 2.5, 0.25]", [1.0, 2.5, 0.25])],
)
def test_class_weights_load_and_round_trip(tmp_path: Path, override: str, expected) -> None:
    cfg = load_config(overrides=[f"loss.class_weights={override}"])
    assert cfg.loss.class_weights == expected and Config().loss.class_weights == "none"
    path = tmp_path / "config.yaml"
    save_config(cfg, path)
    assert load_config(path) == cfg
    from_yaml = load_config(_write(tmp_path, {"loss": {"class_weights": expected}}))
    assert from_yaml.loss.class_weights == expected


@pytest.mark.parametrize(
    ("every", "warmup", "evaluated"),
    [(1, 0, [1, 2, 3, 4, 5, 6]), (2, 0, [2, 4, 6]), (1, 3, [4, 5, 6]), (2, 3, [5])],
)
def test_is_eval_epoch(every: int, warmup: int, evaluated: list[int]) -> None:
    cfg = EvalConfig(every=every, warmup=warmup)
    assert [e for e in range(1, 7) if cfg.is_eval_epoch(e)] == evaluated
