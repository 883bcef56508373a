"""Where training and evaluation time goes, for the configuration given, measured side by
side in one process.

    python -m detector.bench [--config FILE] [--set KEY=VALUE] [--json OUT] [--quick]
                             [--jpegs SPEC]

The input pipeline is the one ``train.py`` builds for the config (`bench_train_input`:
``detector.engine.run``'s plan and ``build.make_train_input``: mosaic, mixup, multi-scale,
workers, seed, the albumentations stage), the models are built as a run builds them
(precision and XLA resolved for this machine); the configuration timed is printed first
and written at the top of the JSON. Every ratio is a pair (or more) of timings taken in
alternating rounds (`detector.bench.rounds`), reported with its spread and, where it has
a target, met / missed / within noise. docs/performance.md says what each figure measures.
"""

import argparse
import json
import os
import resource

from detector.bench.rounds import TARGETS, load_or_say, verdict
from detector.config.schema import DEFAULT_CONFIG


def bench_train_input(cfg, train):
    """(the config with devices resolved as a run resolves them, its `RunPlan`, the
    `TrainInput` ``train.py`` builds for it on `train`), nothing written."""
    from detector.engine.build import make_train_input
    from detector.engine.resolve import dry_plan
    from detector.engine.run import resolve_devices

    cfg, line = resolve_devices(cfg, 1)
    print(line)
    plan = dry_plan(cfg, train)
    return plan.config, plan, make_train_input(plan.config, train, plan)


def timed_configuration(cfg, spec) -> dict:
    """What the bench timed: the model and precision of `cfg`, the input pipeline's
    settings read from the `TrainInput` `spec` itself."""
    stage = spec.make_augmenter().stage if spec.make_augmenter else None
    return {
        "variant": cfg.model.variant,
        "width": cfg.model.width,
        "input_size": spec.input_size,
        "batch_size": spec.batch_size,
        "precision": cfg.train.precision,
        "jit_compile": cfg.train.jit_compile,
        "mosaic": spec.mosaic,
        "mixup": spec.mixup,
        "multiscale": list(spec.multiscale) if spec.multiscale else [],
        "multiscale_every": spec.multiscale_every,
        "workers": spec.parallel_calls,
        "seed": spec.seed,
        "cache_mb": spec.cache_mb,
        "letterbox": spec.letterbox,
        "albumentations": stage.pipeline if stage else [],
    }


def measure(cfg, quick: bool = False, jpegs: str | None = None) -> dict:
    """Runs every measurement; returns the configuration timed, then the figures."""
    import keras
    import tensorflow as tf

    from detector.bench import evaluation, pipeline, step
    from detector.data.pipeline import make_train_dataset
    from detector.engine.run import read_splits

    train, val = read_splits(cfg.data.spec, cfg.data.max_pixels)
    cfg, plan, spec = bench_train_input(cfg, train)
    out = timed_configuration(cfg, spec)
    print(json.dumps(out))
    out["accelerators"] = len(tf.config.list_physical_devices("GPU"))
    rounds = 2 if quick else 5
    keras.mixed_precision.set_global_policy(cfg.train.precision)
    models = step.training_models(cfg, train, plan)
    inference, model, _ = models
    dataset = make_train_dataset(spec)
    out.update(step.step_figures(cfg, models, dataset, 5 if quick else 12, rounds))
    out["train_flops_per_image"] = 3 * step.conv_flops(inference, cfg.model.input_size)
    out.update(evaluation.eval_figures(cfg, inference, val, rounds))
    epoch_steps = 5 if quick else plan.steps
    epochs = 2  # evaluated epochs kept (rounds), after two warm-up ones
    out.update(evaluation.callback_figures(cfg, inference, model, dataset, val, epoch_steps,
                                           epochs))  # fmt: skip
    records, out["jpegs"] = pipeline.real_jpegs(jpegs, train.records)
    out.update(pipeline.pipeline_cpu_figures(spec, records, quick, rounds))
    out.update(pipeline.albumentations_cost(cfg, records, spec.input_size, quick))
    out.update(step.full_step_figures(len(train.names), plan.anchors, quick, rounds))
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


ROWS = (
    ("pipeline_ips", "input pipeline alone, images/s (fresh iterator per round)"),
    ("step_ips", "train step on the same batches cached, images/s"),
    ("fit_ips", "fit over the real pipeline, images/s"),
    ("pipeline_ratio", "  fit / min(pipeline, step)"),
    ("pipeline_ratio_bound", "  no accelerator: step CPU / (step + pipeline CPU), its ceiling"),
    ("loss_overhead", "(YoloLoss step - MSE step) / YoloLoss step, same batches"),
    ("full_step_ips", "full Darknet-19 @416, batch 4, float32, images/s"),
    ("full_step_gflops", "  achieved GFLOP/s (3x forward conv FLOPs)"),
    ("matmul_gflops", "float32 matmul, GFLOP/s (alternated with the full step)"),
    ("full_step_vs_matmul", "  full step / matmul"),
    ("forward_ips", "float32 eval copy's forward, eval batch, cached images, images/s"),
    ("eval_ips", "evaluate as training does (cached images), images/s"),
    ("eval_first_ips", "  as evaluate.py does (images read, results list), images/s"),
    ("eval_vs_forward", "  eval / forward"),
    ("callback_share", "training thread's wait in BestCocoAP / epoch (the config's mode)"),
    ("callback_share_sync", "  evaluating at the epoch end"),
    ("callback_share_async", "  eval.async: the wait only (epoch timed with the worker running)"),
    ("pipeline_ms_per_image", "training pipeline CPU ms per example, 1 thread (real JPEGs)"),
    ("decode_ms_per_image", "  plain JPEG decode (cv2.imdecode) of one of the files, ms"),
    ("pipeline_vs_decode", "  pipeline / decode"),
    ("pipeline_ips_1_call", "  pipeline with 1 loading thread, images/s"),
    ("pipeline_scaling", "  2 loading threads / 1"),
    ("albumentations_ms_per_image", "data.albumentations stage, CPU ms per example (alternated)"),
    ("peak_rss_mb", "peak resident memory, MB"),
)


def format_table(r: dict) -> str:
    """The figures of `r` with their spread and, for a target, the verdict and margin."""
    lines = [f"{'measure':<22} {'value':>10} {'spread':>8}  meaning"]
    for key, meaning in ROWS:
        if key not in r:
            continue
        spread = r.get(f"{key}_spread")
        mark = ""
        if key in TARGETS:
            said, margin = verdict(key, r[key], spread or 0.0)
            comparison, bound = TARGETS[key]
            mark = f"  [target {comparison} {bound}: {said}, margin {margin:+.3f}]"
        shown = "" if spread is None else f"{spread:.3f}"
        lines.append(f"{key:<22} {r[key]:>10.3f} {shown:>8}  {meaning}{mark}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m detector.bench", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--config", default=DEFAULT_CONFIG)
    parser.add_argument("--json", help="write the numbers here")
    parser.add_argument("--quick", action="store_true", help="a few steps of each (smoke run)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--jpegs", help="dataset spec of real JPEGs for the pipeline figures")
    args = parser.parse_args(argv)
    cfg = load_or_say(args.config, args.set)
    if cfg is None:
        return 2
    results = measure(cfg, quick=args.quick, jpegs=args.jpegs)
    print(format_table(results))
    if args.json:
        from detector.utils.atomic import atomic_write_text

        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        atomic_write_text(args.json, json.dumps(results, indent=2))
    return 0
