"""Evaluation's figures, for `detector.bench.core`: ``eval_vs_forward`` and
``callback_share``.

``eval_vs_forward``: evaluation end to end against the compiled forward alone, both on
the float32 evaluation copy a run evaluates (`EvalCopy`), at ``eval.batch_size``, over
the same validation images kept in memory (``eval.cache_mb``), in alternating rounds;
``eval_ips_first`` (evaluate.py's way: images read, results list kept) is a third job of
the same rounds.

``callback_share``: the training thread's wait in `BestCocoAP` ÷ the epoch, over real
epochs of the real pipeline, both ways: ``_sync`` (evaluation at the epoch end) and
``_async`` (``eval.async``: only the time the training thread waits for the worker). The
headline is the mode the config runs: the wait-only share credits async with time it
does not save on a machine whose cores the worker shares (docs/performance.md). Its
rounds are the evaluated epochs after two warm-up ones.
"""

import time

import numpy as np

from detector.bench.rounds import alternate, figure


def eval_figures(cfg, inference, val, rounds: int) -> dict:
    """``eval_vs_forward`` (and its sides in images/s) on the float32 evaluation copy."""
    import tensorflow as tf

    from detector.data.coco import ground_truth
    from detector.engine.build import eval_kwargs
    from detector.engine.eval_copy import EvalCopy
    from detector.evaluation.coco import EvalImages, evaluate_model
    from detector.inference.forward import make_predict_fn

    e, size, count = cfg.eval, cfg.model.input_size, len(val.records)
    model = EvalCopy(inference).sync()
    how = eval_kwargs(e)
    how["predict_fn"] = make_predict_fn(model, e.score_threshold, e.nms_iou, e.max_detections)
    truth, cache = ground_truth(val), EvalImages(val.records, e.cache_mb)
    forward = tf.function(lambda x: model(x, training=False))
    batches = cache.batches(size, e.batch_size, cfg.data.letterbox)

    def timed(name, fn):
        def job() -> dict:
            start = time.perf_counter()
            fn()
            return {name: (time.perf_counter() - start) / count}

        return job

    def forward_pass():
        for images, _ in batches:
            forward(images).numpy()

    jobs = {
        "forward": timed("forward_s", forward_pass),
        "eval": timed("eval_s", lambda: evaluate_model(model, val, size, truth, **how,
                                                        images=cache, keep_results=False)),
        "first": timed("eval_first_s", lambda: evaluate_model(model, val, size, truth, **how)),
    }  # fmt: skip
    r = alternate(jobs, rounds)
    out = {f"{k[:-2]}_ips": 1 / min(v) for k, v in r.items()}
    return {**out, **figure("eval_vs_forward", r, lambda f, ev: f / ev, "forward_s", "eval_s")}


def callback_figures(cfg, inference, model, pipeline, val, steps: int, epochs: int) -> dict:
    """``callback_share`` both ways (sync, async) over `epochs` evaluated epochs of
    `steps` steps each, after two warm-up epochs (they trace the predict function and
    fill the image cache; async collects epoch 1's evaluation at epoch 2's end)."""
    out = {}
    for mode in ("sync", "async"):
        waits, walls = _callback_epochs(cfg, inference, model, pipeline, val, steps, mode, epochs)
        # every `every`-th epoch is evaluated: its wait is spread over `every` epochs
        rounds = {"wait": [w / cfg.eval.every for w in waits]}
        rounds["train"] = [wall - wait for wall, wait in zip(walls, waits, strict=True)]
        name = f"callback_share_{mode}"
        out.update(figure(name, rounds, lambda wait, train: wait / (train + wait), "wait", "train"))
        out[f"eval_wait_{mode}"] = min(rounds["wait"])
        out[f"epoch_seconds_{mode}"] = min(rounds["train"]) + min(rounds["wait"])
    mode = "async" if cfg.eval.async_ else "sync"
    out["callback_share"] = out[f"callback_share_{mode}"]
    out["callback_share_spread"] = out[f"callback_share_{mode}_spread"]
    return out


def _callback_epochs(cfg, inference, model, pipeline, val, steps, mode, epochs) -> tuple:
    """(seconds the training thread spent in BestCocoAP's epoch end, epoch wall seconds)
    per epoch after the first two of ``2 + epochs`` evaluated epochs."""
    from detector.data.coco import ground_truth
    from detector.engine.build import eval_kwargs
    from detector.engine.callbacks.coco_ap import BestCocoAP
    from detector.engine.eval_copy import EvalCopy

    e = cfg.eval
    settings = {"background": mode == "async", "cache_mb": e.cache_mb, **eval_kwargs(e)}
    # no parts (KeepBest, ...): the evaluation alone, nothing written
    best = BestCocoAP(EvalCopy(inference), val, ground_truth(val), lambda _: True, **settings)
    waits, walls, marks, epoch_end = [], [], {}, best.on_epoch_end

    def begin(epoch, logs=None):
        marks["begin"] = time.perf_counter()

    def end(epoch, logs=None):
        start = time.perf_counter()
        epoch_end(epoch, logs)
        waits.append(time.perf_counter() - start)
        walls.append(time.perf_counter() - marks["begin"])

    best.on_epoch_begin, best.on_epoch_end = begin, end
    model.fit(pipeline, steps_per_epoch=steps, epochs=2 + epochs, verbose=0, callbacks=[best])
    return np.array(waits[2:]), np.array(walls[2:])
