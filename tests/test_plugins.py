"""A model kind and a task defined outside unigen/ (tests/plugin_vecnet.py, named by the config's
`imports`) train, checkpoint, resume and sample through train/train.py and infer/sample.py."""

import json
import os
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "tests", "plugin_config.py")


def _run(*args, cwd=None):
    out = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=600, cwd=cwd or ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    return out


def _train(workdir, steps):
    return _run(os.path.join(ROOT, "train", "train.py"), "--config", CONFIG, "--workdir", str(workdir),
                "--no-progress", f"--config.train.steps={steps}")


def _state(workdir):
    from unigen.training import checkpoint as ck
    from unigen.training.build import import_plugins
    cfg = ck.read_config(str(workdir))
    import_plugins(cfg)
    _, abstract, _, _ = ck.abstract_train_state(cfg)
    c = ck.Checkpointer(str(workdir))
    try:
        return c.restore(c.latest_step(), abstract)
    finally:
        c.close()


def test_outside_kind_and_task_train_resume_and_sample(tmp_path):
    resumed, whole = tmp_path / "resumed", tmp_path / "whole"
    _train(resumed, 3)
    _train(resumed, 6)  # resumes from step 3
    _train(whole, 6)
    with open(resumed / "metrics.jsonl") as f:
        assert [json.loads(line)["step"] for line in f] == [1, 2, 3, 4, 5, 6]
    (a, data_a), (b, data_b) = _state(resumed), _state(whole)
    assert int(a.step) == int(b.step) == 6 and data_a == data_b
    import jax
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert os.path.exists(resumed / "samples_0000006.png")
    # infer/sample.py imports the plugin from the work dir's config, from any directory.
    out = tmp_path / "s" / "samples.npz"
    _run(os.path.join(ROOT, "infer", "sample.py"), "--workdir", str(resumed), "--per-class", "2", "--out", str(out),
         "--classes", "3,7", cwd=str(tmp_path))
    data = np.load(out)
    assert data["images"].shape == (4, 8, 8, 1) and list(data["labels"]) == [3, 3, 7, 7]
    assert os.path.exists(str(out)[:-4] + ".png")
    # ... and unigen.from_pretrained reads the work dir as the plugin's module.
    import unigen
    model = unigen.from_pretrained(str(resumed), scale=2.0)
    assert type(model).__name__ == "VecNet" and model.cfg.scale == 2.0
