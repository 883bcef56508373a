import contextlib

import pytest

from detector.config.schema import load_config
from detector.engine.build import make_optimizer
from detector.engine.distribute import Cluster
from detector.engine.run import new_run_dir
from detector.model.network import build_inference_model


@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_weight_decay_spares_batchnorm_and_biases(name):
    cfg = load_config(overrides=[f"train.optimizer={name}"])
    optimizer = make_optimizer(cfg.train)
    model = build_inference_model(2, [[1, 1]], "tiny", 0.25, 64)
    decayed = {v.path for v in model.trainable_variables if optimizer._use_weight_decay(v)}
    assert "conv_1/kernel" in decayed and "conv_9/kernel" in decayed
    assert not any(p.startswith("bn_") or p.endswith("bias") for p in decayed)
    assert optimizer.weight_decay == pytest.approx(cfg.train.weight_decay)


def test_new_run_dir_never_reuses_a_used_folder(tmp_path):
    base, single = tmp_path / "run", Cluster("none", None)
    with contextlib.ExitStack() as locks:
        assert new_run_dir(str(base), single, locks) == str(base)  # absent: free, now locked
    with contextlib.ExitStack() as locks:
        assert new_run_dir(str(base), single, locks) == str(base)  # empty: free
        (base / "config.yaml").write_text("x")
    with contextlib.ExitStack() as locks:
        assert new_run_dir(str(base), single, locks) == f"{base}-2"
