"""Every Keras callback of a training run, one module per concern. The order the run
uses them in is listed in one place: ``detector.engine.build.make_callbacks``.

- guards.py: `NonFiniteGuard` (a NaN/Inf loss stops the run before any state is saved).
- schedule.py: `TimeBudget` (the wall-clock budget), `LearningRateCallback` (lr in logs).
- mosaic.py: `CloseMosaic` (mosaic and mixup off for the end of the budget).
- coco_ap.py: `BestCocoAP`, the evaluation on schedule (at the epoch end or, with
  ``eval.async``, in a worker thread), handing each evaluation to its parts:
  - listeners.py: `Evaluation`, `EvalListener` (the parts' protocol);
  - best.py: `KeepBest` (best.keras, best.json, pr_curve.png of the best AP);
  - early_stop.py: `EarlyStop` (``train.patience``);
  - images.py: `ValImages` (validation images with predictions in TensorBoard).
- checkpoints.py: `SaveLast` (last.keras at every epoch end).
- logs.py: `MetricsCSV` (metrics.csv, curves.png), `LateLogs` (``eval.async``: each
  epoch's logs held back until its AP is known).
- user.py: `Callback` (``detector.Callback``: the detector's events), `UserEvents`,
  `load_callbacks` (``train.callbacks``), `RunResult`.
- trackers.py: `Tracker`, the experiment trackers' common part (``train.loggers``),
  `require` (their packages); mlflow_logger.py: `MlflowLogger`; wandb_logger.py:
  `WandbLogger`.
- distribute.py: `ChiefOnly`, `SyncStop` (multi-worker).
- state.py: `RunState` (the resume state, saved last at every epoch end).

The evaluation model they share is `detector.engine.eval_copy.EvalCopy`.
"""
