"""What this process computes on: its devices, the precision policy and XLA.

``train.precision: auto`` and ``train.jit_compile: auto`` are resolved here, each by a
pure function of the hardware (`auto_precision`, `resolve_jit_compile`, tested on made-up
machines) behind a thin wrapper that asks TensorFlow and ``/proc/cpuinfo``. Training
prints the resolved values first thing (`describe_devices` names the GPUs), so a job that
silently fell back to the CPU or to float32 is seen at once.
"""


def describe_devices() -> str:
    """The GPUs this process sees, e.g. "GPU x2 (NVIDIA A100-SXM4-40GB, NVIDIA
    A100-SXM4-40GB)", or "CPU only" (for the run's first lines: a job that silently
    fell back to the CPU is seen at once), with what TensorFlow's held-back start-up
    lines meant, e.g. "CPU only (no CUDA driver; oneDNN on)" (`native_log.notes`)."""
    import tensorflow as tf

    from detector.utils.native_log import notes

    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        said = notes()
        if "no CUDA driver" in said:  # then cuInit's failure says nothing more
            said = [note for note in said if note != "no CUDA device"]
        return "CPU only" + (f" ({'; '.join(said)})" if said else "")
    names = [tf.config.experimental.get_device_details(gpu).get("device_name") for gpu in gpus]
    names = [name or gpu.name for name, gpu in zip(names, gpus, strict=True)]
    return f"GPU x{len(gpus)} ({', '.join(names)})"


def check_precision(precision: str, gpus: int | None = None) -> None:
    """Refuses ``mixed_float16`` without a GPU: the CPU has no fast float16 arithmetic,
    so it would run slower than float32 (bfloat16 is the CPU's half precision).

    Args:
        precision: str. ``train.precision``.
        gpus: int or None. GPUs this process sees. Defaults to None (asks TensorFlow).

    Raises:
        ValueError: float16 with no GPU.
    """
    if precision != "mixed_float16":
        return
    if gpus is None:
        import tensorflow as tf

        gpus = len(tf.config.list_physical_devices("GPU"))
    if gpus == 0:
        raise ValueError(
            "train.precision: mixed_float16 needs a GPU (this process sees CPU only); "
            "use mixed_bfloat16 or float32"
        )


BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")


def auto_precision(capabilities, cpu_flags) -> tuple[str, str]:
    """``train.precision: auto`` for given hardware: (policy name, why).

    bfloat16 where it is fast (GPUs of compute capability >= 8.0, CPUs with AMX or
    AVX512-BF16), float16 with loss scaling on older GPUs, float32 elsewhere.

    Args:
        capabilities: list of (major, minor) or None. One per visible GPU (None: not
            reported; counted as an older GPU, since float16 runs on every CUDA GPU).
        cpu_flags: iterable of str. The CPU's feature flags (``/proc/cpuinfo``).
    """
    if capabilities:
        known = [c for c in capabilities if c is not None]
        if len(known) == len(capabilities) and min(known) >= (8, 0):
            return "mixed_bfloat16", "GPUs of compute capability >= 8.0"
        return "mixed_float16", "GPU of compute capability < 8.0"
    found = sorted(set(BF16_CPU_FLAGS) & set(cpu_flags))
    if found:
        return "mixed_bfloat16", f"CPU with {'/'.join(found)}"
    return "float32", "no GPU, CPU without bfloat16 instructions"


def read_cpu_flags(path: str = "/proc/cpuinfo") -> set[str]:
    """The CPU feature flags Linux reports (empty where the file is missing)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "flags":
                    return set(value.split())
    except OSError:
        pass
    return set()


def gpu_capabilities() -> list:
    """(major, minor) compute capability of each GPU this process sees (None if unknown)."""
    import tensorflow as tf

    capabilities = []
    for gpu in tf.config.list_physical_devices("GPU"):
        capability = tf.config.experimental.get_device_details(gpu).get("compute_capability")
        capabilities.append(tuple(capability) if capability else None)
    return capabilities


def resolve_precision(precision: str) -> tuple[str, str]:
    """(the policy the run uses, why): ``auto`` resolved for this machine (`auto_precision`
    on TensorFlow's device details and the CPU flags), anything else as given."""
    if precision != "auto":
        return precision, "as configured"
    chosen, why = auto_precision(gpu_capabilities(), read_cpu_flags())
    return chosen, f"auto: {why}"


def resolve_jit_compile(jit_compile, num_replicas: int, gpus: int) -> tuple[bool, str]:
    """(XLA on, why) for ``train.jit_compile`` (true, false or auto).

    ``auto`` is on for one replica on a GPU. It is off under a multi-replica strategy,
    ``true`` too (a run started on one GPU and resumed on several records ``true``): the
    optimizer step's cross-replica ``merge_call`` cannot be compiled by XLA
    (keras-team/keras#17187). It is off on a CPU-only process: there XLA compiles
    (tested) but runs slower than TensorFlow's own kernels (measured on the default
    config, 2 cores: 0.17-0.33 s/step with XLA vs 0.10-0.13 without, float32 and
    bfloat16, and a longer first step; Keras' own ``auto``
    turns XLA off on CPU-only machines too).

    Args:
        jit_compile: bool or "auto". ``train.jit_compile``.
        num_replicas: int. Replicas in sync (`Cluster.num_replicas`).
        gpus: int. GPUs this process sees.
    """
    if num_replicas > 1 and jit_compile is not False:  # true too: it could only fail
        setting = "auto" if jit_compile == "auto" else "true"
        return False, (
            f"{setting}: off with {num_replicas} replicas (XLA cannot compile the "
            "cross-replica optimizer update, keras-team/keras#17187)"
        )
    if jit_compile != "auto":
        return bool(jit_compile), "as configured"
    if gpus == 0:
        return False, "auto: off on CPU only, where XLA runs slower than TensorFlow's kernels"
    return True, "auto: one replica"


def run_settings(precision: str, jit_compile, num_replicas: int) -> tuple[str, bool, str]:
    """(precision policy, XLA on, the line training prints first): ``train.precision``
    and ``train.jit_compile`` resolved for this process (`resolve_precision`,
    `resolve_jit_compile`), e.g. "devices: CPU only; precision mixed_bfloat16 (auto: CPU
    with avx512_bf16); XLA off (auto: off on CPU only ...)"."""
    chosen, why = resolve_precision(precision)
    jit, why_jit = resolve_jit_compile(jit_compile, num_replicas, len(gpu_capabilities()))
    xla = "on" if jit else "off"
    line = f"devices: {describe_devices()}; precision {chosen} ({why}); XLA {xla} ({why_jit})"
    return chosen, jit, line
