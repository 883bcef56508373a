"""tf.distribute for training: which strategy, who writes, and agreement between workers.

TensorFlow's strategies are the engine: ``MirroredStrategy`` for the devices of one host,
``MultiWorkerMirroredStrategy`` for several hosts (each worker is one process configured
by the ``TF_CONFIG`` environment variable). This module picks one (`make_cluster`),
describes the process's place in it (`Cluster`), and gives the collective operations the
training loop needs so that every worker takes the same decisions: stop now or not
(`Cluster.all_max`), the same learning rate at the same step; and the training stream
split over the workers (`make_datasets`). The two callbacks that keep
the workers together, `ChiefOnly` and `SyncStop`, are in
`detector.engine.callbacks.distribute`.

Keras 3 (3.15) cannot run ``fit`` under ``MultiWorkerMirroredStrategy`` as released
(keras-team/keras#20585): it reduces the per-replica first batch with a cross-worker
MEAN to build the model, and reduces scalar step outputs along an axis they do not have.
`patch_keras_for_multi_worker` replaces those two reductions (first replica's batch;
axis-free MEAN), only when a multi-worker strategy is used.
"""

import dataclasses
import json
import os
import shutil
import tempfile

from detector.data.pipeline import TrainInput, make_train_dataset

KINDS = ("auto", "none", "mirrored", "multi_worker")


class ClusterError(RuntimeError):
    """The workers of a multi-worker run cannot go on together (reported, not a bug)."""


def tf_config_workers(environ=None) -> tuple[int, int]:
    """(number of workers, this task's index) from ``TF_CONFIG``; (1, 0) when unset.

    Raises:
        ValueError: TF_CONFIG is not JSON, or lacks cluster.worker / task.index.
    """
    text = (environ if environ is not None else os.environ).get("TF_CONFIG", "")
    if not text.strip():
        return 1, 0
    try:
        config = json.loads(text)
        workers = config["cluster"]["worker"]
        kind, index = config["task"]["type"], int(config["task"]["index"])
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise ValueError(
            'TF_CONFIG must be JSON like {"cluster": {"worker": ["host1:port", "host2:port"]}, '
            f'"task": {{"type": "worker", "index": 0}}}} (missing or bad: {error})'
        ) from None
    if kind != "worker" or set(config["cluster"]) != {"worker"}:
        raise ValueError(
            "TF_CONFIG: train.py runs as workers only (cluster.worker, "
            f"task.type 'worker'; worker 0 is the chief), got task.type {kind!r} "
            f"and cluster jobs {sorted(config['cluster'])}"
        )
    if not 0 <= index < len(workers):
        raise ValueError(
            f"TF_CONFIG task.index {index} is not in the cluster of {len(workers)} workers"
        )
    return len(workers), index


def resolve_kind(kind: str, num_gpus: int, num_workers: int) -> str:
    """``auto`` → multi_worker when TF_CONFIG names several workers, mirrored with more
    than one GPU, else none; other kinds pass through (validated)."""
    if kind not in KINDS:
        raise ValueError(f"train.distribute: {kind!r}; expected one of {list(KINDS)}")
    if kind != "auto":
        return kind
    if num_workers > 1:
        return "multi_worker"
    return "mirrored" if num_gpus > 1 else "none"


@dataclasses.dataclass
class Cluster:
    """This process's place in a (possibly one-process, one-device) training job.

    Attributes:
        kind: str. "none", "mirrored" or "multi_worker".
        strategy: tf.distribute.Strategy. The default strategy for "none".
        num_replicas: int. Replicas in sync over all workers (the global batch is split
            into this many parts).
        num_workers: int. Processes (1 unless multi_worker).
        worker_index: int. This process's index; 0 is the chief.
    """

    kind: str
    strategy: object
    num_replicas: int = 1
    num_workers: int = 1
    worker_index: int = 0

    @property
    def is_chief(self) -> bool:
        """Worker 0 writes the run directory; the others write to a temporary place."""
        return self.worker_index == 0

    @property
    def multi_worker(self) -> bool:
        return self.num_workers > 1

    def all_max(self, value: float) -> float:
        """The largest of every worker's `value` (a collective: every worker must call it
        at the same point). Without several workers, `value` itself."""
        if not self.multi_worker:
            return float(value)
        import tensorflow as tf

        if getattr(self, "_max_fn", None) is None:  # traced once, not at every call

            @tf.function
            def max_fn(x):
                per_replica = self.strategy.run(tf.identity, args=(x,))  # one value per replica
                return tf.reduce_max(self.strategy.gather(per_replica, axis=0))

            self._max_fn = max_fn
        return float(self._max_fn(tf.constant([float(value)], tf.float32)))

    def same_everywhere(self, value: float) -> bool:
        """Whether every worker passed the same `value` (two collectives)."""
        return self.all_max(value) == -self.all_max(-value)

    def agree(self, ok: bool, what: str) -> None:
        """Raises on every worker if any worker reports not `ok` (so that one worker's
        error does not leave the others waiting in a collective forever). A worker that
        exits as soon as its own part of the vote is done can break the collective for
        the others (a TensorFlow error on their side): that too is "another worker
        failed", and a worker that is not `ok` keeps its own error for its caller."""
        import tensorflow as tf

        try:
            failed = self.all_max(0.0 if ok else 1.0) > 0
        except tf.errors.OpError as error:
            if not ok:
                return  # the caller re-raises its own error, the one to report
            lost = f"{type(error).__name__} in the vote"
            raise ClusterError(f"another worker failed {what}; see its output ({lost})") from None
        if failed and ok:
            raise ClusterError(f"another worker failed {what}; see its output")

    def write_dir(self, run_dir: str) -> str:
        """Where this process writes: the run directory on the chief, a temporary
        directory of its own on the other workers (`cleanup` removes it)."""
        if self.is_chief:
            return run_dir
        if not hasattr(self, "_scratch"):
            self._scratch = tempfile.mkdtemp(prefix=f"detector-worker{self.worker_index}-")
        return self._scratch

    def cleanup(self) -> None:
        """Removes a non-chief worker's temporary directory."""
        scratch = getattr(self, "_scratch", None)
        if scratch:
            shutil.rmtree(scratch, ignore_errors=True)


def split_cpu(count: int) -> None:
    """Splits the host CPU into `count` logical devices (before TensorFlow starts)."""
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(count)]
    )


def make_cluster(kind: str = "auto", devices=()) -> Cluster:
    """Creates the strategy. Call it before any other TensorFlow work in the process.

    Args:
        kind: str. ``train.distribute``: auto, none, mirrored or multi_worker.
        devices: list of str. ``train.devices`` for mirrored, e.g. ["/gpu:0", "/gpu:1"]
            (empty = every GPU, or the CPU). CPU devices beyond /cpu:0 are made by
            splitting the CPU into logical devices (to test on a CPU-only machine).
    """
    import tensorflow as tf

    num_workers, index = tf_config_workers()
    cpus = [d for d in devices if "cpu" in d.lower()]
    if len(cpus) > 1:
        split_cpu(len(cpus))
    kind = resolve_kind(kind, len(tf.config.list_physical_devices("GPU")), num_workers)
    if kind == "none":
        if num_workers > 1:
            raise ValueError(
                "TF_CONFIG names several workers but train.distribute is "
                "'none': use auto or multi_worker"
            )
        return Cluster("none", tf.distribute.get_strategy())
    if kind == "mirrored":
        if num_workers > 1:
            raise ValueError(
                "train.distribute: mirrored is for the devices of one host; "
                "TF_CONFIG names several workers (use multi_worker)"
            )
        strategy = tf.distribute.MirroredStrategy(list(devices) or None)
        return Cluster("mirrored", strategy, strategy.num_replicas_in_sync)
    patch_keras_for_multi_worker()
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    return Cluster("multi_worker", strategy, strategy.num_replicas_in_sync, num_workers, index)


def make_datasets(spec: TrainInput, cluster: Cluster):
    """The training stream: one pipeline per worker, each reading its own slice of every
    global batch (multi-worker), else one pipeline whose batches Keras splits."""
    if not cluster.multi_worker:
        return make_train_dataset(spec)

    def per_worker(ctx):
        replicas = ctx.num_replicas_in_sync // ctx.num_input_pipelines
        shard = (ctx.num_input_pipelines, ctx.input_pipeline_id)
        return make_train_dataset(spec, shard=shard, replicas_per_pipeline=replicas)

    return cluster.strategy.distribute_datasets_from_function(per_worker)


def patch_keras_for_multi_worker() -> None:
    """Keras 3's two reductions that fail under MultiWorkerMirroredStrategy, replaced.

    1. ``fit`` builds the model's metrics on a first batch obtained by a cross-worker MEAN
       of the distributed batch (fails: it tries to convert a PerReplica to a tensor);
       the first local replica's batch has the same shapes and dtypes, which is all the
       build needs.
    2. Step outputs (scalar metric values) are reduced with ``reduce("MEAN", axis=0)``,
       which fails on scalars; an axis-free MEAN over all replicas is what is meant.
    """
    import tensorflow as tf
    from keras.src import tree
    from keras.src.backend.tensorflow import trainer

    if getattr(trainer, "_detector_patched", False):
        return
    original = trainer.reduce_per_replica

    def reduce_per_replica(values, strategy, reduction):
        if not (
            trainer._collective_all_reduce_multi_worker(strategy) and reduction in ("auto", "mean")
        ):
            return original(values, strategy, reduction)

        def mean(value):
            if not trainer._is_per_replica_instance(value):
                return value
            rank = strategy.experimental_local_results(value)[0].shape.rank
            return strategy.reduce("MEAN", value, axis=None if rank == 0 else 0)

        return tree.map_structure(mean, values)

    def maybe_symbolic_build(self, iterator=None, data_batch=None):
        if self._distribute_strategy is None:
            return
        if iterator is not None:
            for _, _, it in iterator:
                batch = next(it)
                data_batch = tree.map_structure(
                    lambda x: (
                        self.distribute_strategy.experimental_local_results(x)[0]
                        if isinstance(x, tf.distribute.DistributedValues)
                        else x
                    ),
                    batch,
                )
                break
        with self.distribute_strategy.scope():
            self._symbolic_build(data_batch=data_batch)

    trainer.reduce_per_replica = reduce_per_replica
    trainer.TensorFlowTrainer._maybe_symbolic_build = maybe_symbolic_build
    trainer._detector_patched = True
