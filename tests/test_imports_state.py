"""Importing `detector` and every module under it changes no process-wide state.

Seeds, precision policy, logging, plotting backend and environment belong to entry points
(STYLE.md). The imports run in a fresh interpreter, so this test process is not polluted and
a change made by an earlier test cannot hide one made at import.
"""

import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Third-party libraries are imported before the first snapshot: what they do at their own
# import is not ours to check. `matplotlib.get_backend()` with MPLBACKEND set reads the
# setting without resolving a GUI backend, and shows any `matplotlib.use`.
CHILD = r"""
import hashlib, importlib, json, logging, os, pkgutil, random, signal, sys, warnings
import cv2, matplotlib, numpy as np, pycocotools.cocoeval, yaml
import keras, tensorflow as tf


def umask():
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def digest(value):
    return hashlib.sha256(repr(value).encode()).hexdigest()


def state():
    return {
        "environ": dict(os.environ),
        "umask": umask(),
        "cwd": os.getcwd(),
        "sys.path": list(sys.path),
        "keras policy": keras.mixed_precision.global_policy().name,
        "keras floatx": keras.config.floatx(),
        "keras image_data_format": keras.config.image_data_format(),
        "matplotlib backend": matplotlib.get_backend(),
        "tf run eagerly": tf.config.functions_run_eagerly(),
        "tf jit": str(tf.config.optimizer.get_jit()),
        "tf logger level": tf.get_logger().level,
        "root logger": [logging.getLogger().level, len(logging.getLogger().handlers)],
        "warnings filters": [repr(f) for f in warnings.filters],
        "signals": [repr(signal.getsignal(s)) for s in (signal.SIGINT, signal.SIGTERM)],
        "numpy global random": digest(np.random.get_state()[1].tolist()),
        "python random": digest(random.getstate()),
    }


before = state()
import detector

modules = ["detector"]
for info in pkgutil.walk_packages(detector.__path__, "detector."):
    importlib.import_module(info.name)
    modules.append(info.name)
after = state()
print("STATE " + json.dumps({"modules": modules, "before": before, "after": after}))
"""


def _child_env() -> dict[str, str]:
    """A small, fixed environment: nothing an earlier import in this process set leaks in."""
    keep = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "SYSTEMROOT")
    env = {k: os.environ[k] for k in keep if k in os.environ}
    return {
        **env,
        "PYTHONPATH": REPO,
        "MPLBACKEND": "svg",
        "CUDA_VISIBLE_DEVICES": "",
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }


def test_importing_every_detector_module_changes_no_process_state():
    result = subprocess.run(
        [sys.executable, "-c", CHILD],
        cwd=REPO,
        env=_child_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    line = next(x for x in result.stdout.splitlines() if x.startswith("STATE "))
    report = json.loads(line[len("STATE ") :])
    expected_modules = {
        "detector.utils.atomic",
        "detector.evaluation.training_plots",
        "detector.data.plots",
        "detector.model.layers",
    }
    assert expected_modules <= set(report["modules"])
    before, after = report["before"], report["after"]
    assert before["matplotlib backend"] == "svg"
    changed = {k: (before[k], after[k]) for k in before if before[k] != after[k]}
    if "environ" in changed:
        old, new = changed["environ"]
        changed["environ"] = {
            k: (old.get(k), new.get(k)) for k in old.keys() | new.keys() if old.get(k) != new.get(k)
        }
    assert changed == {}
