"""``detector.train``: train a detector from Python; ``train.py`` / ``detector train`` are its
command line.

    import detector
    result = detector.train(overrides={"train.max_minutes": 1})     # the embedded default
    print(result.best_metrics["AP"], result.best_path)
    result = detector.train(
        config="configs/yolov2.yaml",
        data="my_dataset.yaml",
        overrides={"train.epochs": 50, "data.batch_size": 32},
        callbacks=[keras.callbacks.EarlyStopping(monitor="AP", mode="max", patience=5)],
    )
    detector.train(resume=result.run_dir, overrides={"train.epochs": 80})    # extend it

Errors are typed (`ConfigError`: bad config, data or files, before training starts;
`TrainingError`: a run that stopped on purpose, e.g. a non-finite loss) with the messages
the command line prints; Ctrl-C raises KeyboardInterrupt with the resume hint.
"""

import os
from collections.abc import Mapping, Sequence

import yaml

from detector.config.schema import DEFAULT_CONFIG, Config, load_config
from detector.engine.callbacks.user import RunResult
from detector.utils.errors import ConfigError, TrainingError

TrainResult = RunResult  # run_dir, best_path, last_path, best_metrics, history


def override_lines(overrides: Mapping[str, object] | Sequence[str] | None) -> list[str]:
    """``{"train.lr": 0.01, "data.multiscale": []}`` (or ``["train.lr=0.01"]``) as the
    ``key=value`` lines ``--set`` takes (values written as YAML, which ``--set`` parses)."""
    if overrides is None:
        return []
    if isinstance(overrides, str):
        raise ConfigError(
            f"overrides: expected a mapping or a list of key=value, got {overrides!r}"
        )
    if not isinstance(overrides, Mapping):
        return [str(line) for line in overrides]
    lines = []
    for key, value in overrides.items():
        text = value if isinstance(value, str) else yaml.safe_dump(value, default_flow_style=True)
        lines.append(f"{key}={text.strip().removesuffix('...').strip()}")
    return lines


def resolve_config(
    config: str | os.PathLike | Config | None,
    data: str | None,
    overrides: Mapping[str, object] | Sequence[str] | None,
    resume: str | None,
) -> Config:
    """The run's config: `config` (a file, a `Config`, or the default experiment), or with
    `resume` the run's own config.yaml; then `data` (sets ``data.spec``) and `overrides`."""
    lines = ([f"data.spec={data}"] if data else []) + override_lines(overrides)
    if resume:
        if config is not None or data:
            raise ConfigError("--resume takes the run's own config, data and directory")
        path = os.path.join(resume, "config.yaml")
        if not os.path.isfile(path):
            raise ConfigError(f"--resume: no run config at {path}")
        cfg = load_config(path, lines)
        cfg.train.run_dir = resume
        return cfg
    if isinstance(config, Config):  # through its YAML, as a run's config.yaml round-trips
        import tempfile

        from detector.config.schema import save_config

        with tempfile.TemporaryDirectory() as folder:
            path = os.path.join(folder, "config.yaml")
            save_config(config, path)
            return load_config(path, lines)
    return load_config(DEFAULT_CONFIG if config is None else config, lines)


def train(
    config: str | os.PathLike | Config | None = None,
    *,
    data: str | None = None,
    overrides: Mapping[str, object] | Sequence[str] | None = None,
    callbacks: Sequence = (),
    resume: str | None = None,
) -> TrainResult:
    """Trains a detector, as ``python train.py`` does, and returns what the run left.

    Args:
        config: str, path or Config. The experiment YAML, or a loaded `Config`. Defaults
            to None (the embedded default experiment, ``configs/default.yaml``).
        data: str. A dataset spec; sets ``data.spec`` (``--data``). Defaults to None.
        overrides: mapping of "section.key" -> value, or a list of "section.key=value"
            (``--set``), applied last. Defaults to None.
        callbacks: keras Callbacks (a `detector.Callback` also gets the detector's
            events), after those of ``train.callbacks``; run on the chief only. Defaults
            to none.
        resume: str. A run directory to continue from its saved state (its own config;
            `overrides` may extend ``train.epochs`` or replace the budget). Defaults to
            None.

    Returns:
        TrainResult: ``run_dir``, ``best_path``, ``last_path``, ``best_metrics`` (COCO
        metrics of best.keras on the val split), ``history`` (one dict per epoch).

    Raises:
        ConfigError: bad config, data or files (nothing was trained).
        TrainingError: the run stopped on purpose (non-finite loss, a failed worker).
    """
    try:
        cfg = resolve_config(config, data, overrides, resume)
        import keras

        from detector.engine.distribute import ClusterError
        from detector.engine.run import TrainingStopped, run

        keras.utils.set_random_seed(cfg.train.seed)
        try:
            return run(cfg, resume=bool(resume), callbacks=list(callbacks))
        except (TrainingStopped, ClusterError) as error:
            raise TrainingError(str(error)) from error
    except (ConfigError, TrainingError):
        raise
    except ValueError as error:  # detector.engine.faults.RunFailed too: data, disk
        raise ConfigError(str(error)) from error
    except OSError as error:  # a path the system refuses before the run started
        from detector.engine.faults import describe_os_error

        raise ConfigError(describe_os_error(error)) from error
