"""Reliability and first impressions: a damaged latest checkpoint is moved aside and the run
resumes from the previous one; expected failures print one `error:` line through the real entry
points; a finished run is not retrained; `infer/sample.py --protocol` reproduces the trainer's
evaluation whatever the batch size."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "dit_digits.py")
TINY = ["--config.model.depth=1", "--config.model.hidden_size=32", "--config.model.num_heads=2",
        "--config.train.batch_size=16", "--config.train.warmup_steps=2", "--config.train.log_every=1",
        "--config.train.sample_every=0", "--config.eval.at_end=False", "--no-progress"]


def _cli(script, *args, cwd=None):
    return subprocess.run([sys.executable, os.path.join(ROOT, *script.split("/")), *args], capture_output=True,
                          text=True, timeout=600, cwd=cwd, env=dict(os.environ, PYTHONUNBUFFERED="1"))


def _train(workdir, *args):
    return _cli("train/train.py", "--config", CONFIG, "--workdir", str(workdir), *TINY, *args)


def _listing(folder):
    return sorted((os.path.relpath(os.path.join(d, f), folder), os.path.getsize(os.path.join(d, f)))
                  for d, _, files in os.walk(folder) for f in files)


def _losses(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [(r["step"], r["loss"]) for r in map(json.loads, f)]


def test_damaged_latest_checkpoint_is_moved_aside_and_the_run_resumes(tmp_path):
    every = ["--config.train.checkpoint_every=2", "--config.train.keep_checkpoints=3"]
    whole, damaged = tmp_path / "whole", tmp_path / "damaged"
    assert _train(whole, "--config.train.steps=6", *every).returncode == 0
    assert _train(damaged, "--config.train.steps=4", *every).returncode == 0
    files = [os.path.join(d, f) for d, _, fs in os.walk(damaged / "checkpoints" / "4") for f in fs]
    largest = max(files, key=os.path.getsize)
    with open(largest, "r+b") as f:
        f.truncate(os.path.getsize(largest) // 3)
    out = _train(damaged, "--config.train.steps=6", *every)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Traceback" not in out.stderr and "Event loop is closed" not in out.stderr
    warnings = [line for line in out.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 2 and "checkpoints/4" in warnings[0], out.stderr
    kept = os.listdir(damaged / "damaged_checkpoints")
    assert len(kept) == 1 and kept[0].startswith("4-")  # kept aside, not deleted
    assert _losses(damaged) == _losses(whole)  # steps 3..6 redone from checkpoint 2, same numbers
    # Every step damaged: one clear error, nothing deleted.
    for step in ("2", "4", "6"):
        for d, _, fs in os.walk(damaged / "checkpoints" / step):
            for name in fs:
                if name != "_CHECKPOINT_METADATA" and os.path.getsize(os.path.join(d, name)) > 8:
                    with open(os.path.join(d, name), "r+b") as f:
                        f.truncate(3)
    out = _train(damaged, "--config.train.steps=8", *every)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    # one line naming every damaged step; no "resuming" when nothing is left to resume from, no absl ERROR lines
    assert out.stderr.strip().startswith("error: no readable checkpoint is left") and "steps 6, 4, 2" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert len(os.listdir(damaged / "damaged_checkpoints")) == 4


def test_orphaned_read_errors_are_dropped_even_when_collected_after_the_restore(caplog):
    """asyncio reports an abandoned read's future only when it is collected, which may be after
    the restore returned: exactly those reports are dropped, any other asyncio error is kept."""
    import asyncio
    import gc

    from unigen.training.checkpoint import _quiet_async_errors

    with _quiet_async_errors():
        pass

    def abandoned(message):
        loop = asyncio.new_event_loop()
        future = loop.create_future()
        future.set_exception(Exception(message))
        loop.close()
        del future
        gc.collect()

    with caplog.at_level("ERROR", logger="asyncio"):
        abandoned("Encountered error while reading array index: (slice(0, 1, 1),). See full TensorStore")
        assert not caplog.records
        abandoned("a real error in someone else's task")
        assert len(caplog.records) == 1 and "never retrieved" in caplog.records[0].getMessage()


def test_expected_failures_print_one_error_line(tmp_path):
    work = tmp_path / "w"
    assert _train(work, "--config.train.steps=2", "--config.train.checkpoint_every=2").returncode == 0
    before = _listing(work)
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    cases = [
        (_train(work, "--config.train.steps=4", "--config.model.depth=2"), "config.model.depth=1"),
        (_train(not_a_dir, "--config.train.steps=2"), "is a file"),
        (_train(tmp_path / "n", "--config.train.steps"), "--config.train.steps"),
        (_train(tmp_path / "n", "--config.train.stepz=3"), "stepz"),
    ]
    truncated = tmp_path / "t.npz"
    np.savez(truncated, images=np.zeros((10, 8, 8, 1)), labels=np.zeros(10, int))
    with open(truncated, "r+b") as f:
        f.truncate(100)
    cases.append((_cli("infer/evaluate.py", "--samples", str(truncated)), "t.npz is not a readable .npz"))
    garbage = tmp_path / "garbage"
    garbage.mkdir()
    (garbage / "config.json").write_text("{not json")
    cases.append((_cli("infer/sample.py", "--pretrained", str(garbage), "--out", str(tmp_path / "s.npz")),
                  "config.json is not valid JSON"))
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    (wrong / "config.json").write_text(json.dumps({"_class_name": "DiTTransformer2DModel", "num_layers": "two"}))
    cases.append((subprocess.run([sys.executable, "-m", "unigen.convert", str(wrong), str(tmp_path / "c")],
                                 capture_output=True, text=True, timeout=300), "'num_layers' = 'two' should be int"))
    for out, message in cases:
        assert out.returncode == 2, (message, out.stderr[-2000:])
        assert "Traceback" not in out.stderr, out.stderr[-2000:]
        errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and message in errors[0], (message, out.stderr[-2000:])
    assert _listing(work) == before  # the work dir is unchanged by the refused runs
    assert not (tmp_path / "c").exists()


def test_finished_run_is_not_retrained_and_protocol_reproduces_eval(tmp_path):
    work = tmp_path / "w"
    evaluate = ["--config.eval.at_end=True", "--config.eval.num_samples=100", "--config.eval.seeds=2",
                "--config.eval.batch_size=100", "--config.sample.steps=3"]
    first = _train(work, "--config.train.steps=2", "--config.train.checkpoint_every=2", *evaluate)
    assert first.returncode == 0, first.stderr[-3000:]
    stamp = os.path.getmtime(work / "eval.json")
    again = _train(work, "--config.train.steps=2", "--config.train.checkpoint_every=2", *evaluate)
    assert again.returncode == 0 and "already at its last step (2)" in again.stdout
    assert "nan" not in again.stdout.splitlines()[-1] and os.path.getmtime(work / "eval.json") == stamp
    assert sorted(os.listdir(work / "checkpoints")) == ["2"]
    # The protocol from the command line: the trainer's samples and figures, at any batch size.
    for batch in ("100", "30"):
        out = tmp_path / f"p{batch}.npz"
        res = _cli("infer/sample.py", "--workdir", str(work), "--protocol", "--out", str(out), "--batch-size", batch)
        assert res.returncode == 0, res.stderr[-3000:]
        ours, trainer = np.load(out), np.load(work / "eval_samples.npz")
        np.testing.assert_array_equal(ours["labels"], trainer["labels"])
        np.testing.assert_allclose(ours["images"], trainer["images"], atol=1e-5)
    res = _cli("infer/evaluate.py", "--samples", str(tmp_path / "p100.npz"), "--json", str(tmp_path / "e.json"))
    assert res.returncode == 0, res.stderr[-2000:]
    ours = json.loads((tmp_path / "e.json").read_text())["samples"]
    trainer = json.loads((work / "eval.json").read_text())["samples"]
    for metric in ("accuracy", "fd", "nn_dist", "copy_share"):
        assert ours[metric] == trainer[metric], metric
    # TensorBoard event files: training scalars and the evaluation.
    from tensorboardX.proto import event_pb2  # noqa: F401  (the writer's own format)
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(work / "tensorboard"))


@pytest.mark.parametrize("batch", [3, 16])
def test_a_sample_depends_on_its_index_not_the_batch(batch):
    import jax
    from flax import nnx
    from unigen.diffusion import GaussianDiffusion
    from unigen.models.dit import DiT, dit_config
    from unigen.sampling import Generator
    model = DiT(dit_config("DiT-S/2", input_size=8, in_channels=1, hidden_size=32, depth=1, num_heads=2,
                           num_classes=10), rngs=nnx.Rngs(0))
    gen = Generator.for_model(model, GaussianDiffusion.create(), sample_shape=(8, 8, 1), sampler="ddpm", steps=5)
    labels = {"y": np.arange(10, dtype=np.int32)}
    ref = gen(cond=labels, rng=jax.random.PRNGKey(7), batch_size=10)
    np.testing.assert_allclose(gen(cond=labels, rng=jax.random.PRNGKey(7), batch_size=batch), ref, atol=1e-5)
