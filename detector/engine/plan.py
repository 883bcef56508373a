"""What a run decided before building anything: the `RunPlan` (``run.prepare_run`` makes
it, ``detector.engine.build`` builds from it)."""

import dataclasses

from detector.config.schema import Config
from detector.data.mosaic import MosaicSwitch


@dataclasses.dataclass(frozen=True)
class RunPlan:
    """What a run decided before building anything (the config itself is never mutated).

    Attributes:
        config: Config. The resolved config (anchors and run directory filled in), as
            written to ``RUN_DIR/config.yaml``.
        run_dir: str. The run directory. write_dir: str. Where this process writes (the
            run directory, or a non-chief worker's temporary folder).
        anchors: list of [w, h]. In grid cells.
        steps: int. Training steps per epoch.
        lr: float. The peak learning rate (scaled by the replicas with train.scale_lr).
        resume: bool. Whether the state is restored from ``RUN_DIR/state``.
        done: int. Epochs completed before this session. Defaults to 0.
        best_ap: float. Best AP so far (-1: none). Defaults to -1.
        stale: int. Evaluations since that best (``train.patience`` counts on from it
            after a resume). Defaults to 0.
        spent: float. Seconds spent by earlier sessions. Defaults to 0.
        mosaic_switch: MosaicSwitch. Shared by the training input (reads it) and the
            callbacks (`CloseMosaic` closes it with ``train.close_mosaic`` < 1).
    """

    config: Config
    run_dir: str
    write_dir: str
    anchors: list
    steps: int
    lr: float
    resume: bool = False
    done: int = 0
    best_ap: float = -1.0
    stale: int = 0
    spent: float = 0.0
    mosaic_switch: MosaicSwitch = dataclasses.field(
        default_factory=MosaicSwitch, compare=False, repr=False
    )
