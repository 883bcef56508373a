"""Every Keras callback of a training run, one module per concern, and the order the run
uses them in (below), which ``detector.engine.build.make_callbacks`` builds.

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
- group.py: `Group`, a callback passing every hook on to those it holds (the base of
  `ChiefOnly` and `LateLogs`).
- distribute.py: `ChiefOnly`, `SyncStop` (multi-worker).
- state.py: `RunState` (the resume state, saved last at every epoch end).

The evaluation model they share is `detector.engine.eval_copy.EvalCopy`.

The order, which matters (Keras calls callbacks in list order):

1. NonFiniteGuard first: it raises at a bad batch before any callback sees the epoch.
2. LearningRateCallback: its epoch-end ``lr`` must be in the logs before MetricsCSV,
   the user's callbacks and TensorBoard read them.
3. TimeBudget before BestCocoAP: a spent budget sets ``stop_training`` at the epoch
   end first, so that epoch's evaluation is the final one. CloseMosaic after it
   (``train.close_mosaic`` < 1 with a budget): it reads the budget's share.
4. The chief's own, BestCocoAP → SaveLast → MetricsCSV → the user's callbacks: the
   CSV row needs the AP BestCocoAP puts in the logs. BestCocoAP's parts, for each
   evaluation: ValImages → KeepBest where it ran (``eval.async``: the worker
   thread), then EarlyStop → UserEvents (``on_eval_end``, ``on_checkpoint("best")``)
   in the training thread when it lands. Multi-worker: all inside ChiefOnly, so an
   error in them stops every worker at the epoch end instead of stranding them, and
   the user's callbacks run on the chief only.
5. The user's callbacks after MetricsCSV: their logs hold the epoch's lr and COCO
   numbers, its metrics.csv row is written, SaveLast's ``on_checkpoint("last")``
   came before; and before SyncStop and RunState, which act on their epoch end.
   The experiment trackers of ``train.loggers`` (`make_loggers`) are appended to
   them.
6. TensorBoard after everything that adds to the logs. With ``eval.async``
   MetricsCSV, the user's callbacks and TensorBoard sit inside BestCocoAP's
   ``LateLogs`` (at MetricsCSV's place), which hands them each epoch's logs once
   its AP is known.
7. SyncStop (multi-worker) after every callback that may stop training.
8. RunState last: the state is saved once everything else is done with the epoch
   (best AP and time spent included).
"""
