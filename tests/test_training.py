"""Training end to end on a tiny config: loss goes down, resume after SIGKILL is bitwise
identical, bad configs and damaged checkpoints give errors that name what is wrong."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from fake_devices import fake_devices_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "dit_digits.py")
TINY = ["--config.model.depth=2", "--config.model.hidden_size=32", "--config.model.num_heads=2",
        "--config.train.batch_size=16", "--config.train.warmup_steps=2", "--config.train.log_every=1",
        "--config.train.sample_every=0", "--config.eval.at_end=False", "--config.model.scan_layers=True"]


def tiny_config(*overrides):
    from unigen.training.config import apply_override, load_config_file, parse_overrides
    cfg = load_config_file(CONFIG)
    for key, value in parse_overrides(TINY + list(overrides))[0]:
        apply_override(cfg, key, value)
    return cfg


def read_metrics(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def final_state(workdir):
    from unigen.training import checkpoint as ck
    cfg = ck.read_config(workdir)
    _, abstract, _, _ = ck.abstract_train_state(cfg)
    c = ck.Checkpointer(workdir)
    try:
        state, data = c.restore(c.latest_step(), abstract)
    finally:
        c.close()
    return state, data


def test_few_steps_lower_the_loss(tmp_path):
    from unigen.training.loop import train
    cfg = tiny_config("--config.train.steps=40", "--config.train.lr=2e-3", "--config.train.checkpoint_every=40",
                      "--config.train.sample_every=40", "--config.sample.steps=5", "--config.sample.per_class=2")
    result = train(cfg, str(tmp_path), progress=False)
    rows = read_metrics(tmp_path)
    assert [r["step"] for r in rows] == list(range(1, 41))
    first, last = np.mean([r["loss"] for r in rows[:5]]), np.mean([r["loss"] for r in rows[-5:]])
    assert last < 0.7 * first, (first, last)
    assert result["step"] == 40
    for name in ("loss.png", "samples_0000040.png", "config.json"):
        assert os.path.exists(tmp_path / name), name
    from PIL import Image
    grid = Image.open(tmp_path / "samples_0000040.png")
    assert grid.size[1] > grid.size[0] / 2  # 10 rows (classes) x 2 samples
    # The work dir loads for inference like any pretrained path.
    import unigen
    model = unigen.from_pretrained(str(tmp_path))
    assert model.cfg.depth == 2 and model.cfg.in_channels == 1


def _train_cmd(workdir, steps, every):
    return [sys.executable, os.path.join(ROOT, "train", "train.py"), "--config", CONFIG, "--workdir", str(workdir),
            "--no-progress", *TINY, f"--config.train.steps={steps}", f"--config.train.checkpoint_every={every}",
            "--config.train.keep_checkpoints=2"]


def test_resume_after_sigkill_is_bitwise_identical(tmp_path):
    steps, env = 24, dict(os.environ, PYTHONUNBUFFERED="1")
    ref = tmp_path / "uninterrupted"
    subprocess.run(_train_cmd(ref, steps, 1), check=True, env=env, capture_output=True, timeout=600)
    run = tmp_path / "killed"
    # checkpoint_every=1: most of the run is spent saving, so the kills land inside saves too.
    kills = 0
    for wait_for_step in (3, 9, 15):
        proc = subprocess.Popen(_train_cmd(run, steps, 1), env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        deadline = time.time() + 300
        ckdir = run / "checkpoints"
        while time.time() < deadline and proc.poll() is None:
            done = [int(d) for d in os.listdir(ckdir) if d.isdigit()] if ckdir.exists() else []
            if done and max(done) >= wait_for_step:
                time.sleep(0.05 * wait_for_step % 0.3)
                break
            time.sleep(0.02)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
    assert kills >= 2
    subprocess.run(_train_cmd(run, steps, 1), check=True, env=env, capture_output=True, timeout=600)
    (a, data_a), (b, data_b) = final_state(ref), final_state(run)
    assert int(a.step) == int(b.step) == steps
    assert data_a == data_b
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    rows = read_metrics(run)
    assert [r["step"] for r in rows] == list(range(1, steps + 1))  # no duplicated rows after resume


def test_bad_config_names_the_field(tmp_path):
    from unigen.training.build import ConfigError, validate
    from unigen.training.config import apply_override
    cfg = tiny_config()
    with pytest.raises(ValueError, match="no field 'train.stepz'"):
        apply_override(cfg, "train.stepz", 3)
    apply_override(cfg, "train.batch_size", 15)
    apply_override(cfg, "train.grad_accum", 2)
    with pytest.raises(ConfigError, match=r"config.train.batch_size=15.*grad_accum=2"):
        validate(cfg)
    cfg = tiny_config("--config.model.hidden_size=30")
    with pytest.raises(ConfigError, match="hidden_size"):
        validate(cfg)
    cfg = tiny_config("--config.sample.sampler='ddpm'")  # a Gaussian-diffusion sampler for a flow
    with pytest.raises(ConfigError, match="config.sample.sampler='ddpm'"):
        validate(cfg)
    # From the command line: a clear message and exit code 2, before any compile.
    out = subprocess.run(_train_cmd(tmp_path / "w", 2, 1) + ["--config.train.lr=-1"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "config.train.lr=-1" in out.stderr


def test_damaged_and_incompatible_checkpoints(tmp_path):
    from unigen.training import checkpoint as ck
    from unigen.training.loop import train
    cfg = tiny_config("--config.train.steps=2", "--config.train.checkpoint_every=2")
    train(cfg, str(tmp_path), progress=False)
    # Another architecture in the same work dir: refused, naming the field.
    with pytest.raises(ck.CheckpointError, match=r"config.model.hidden_size=32.*64"):
        train(tiny_config("--config.model.hidden_size=64", "--config.train.steps=4"), str(tmp_path), progress=False)
    # A damaged checkpoint: every array file truncated.
    step_dir = tmp_path / "checkpoints" / "2" / "state"
    for root, _, files in os.walk(step_dir):
        for name in files:
            if name != "_METADATA" and not name.startswith("_"):
                with open(os.path.join(root, name), "r+b") as f:
                    f.truncate(3)
    with pytest.raises(ck.CheckpointError, match=r"no readable checkpoint is left in .*checkpoints"):
        train(tiny_config("--config.train.steps=4", "--config.train.checkpoint_every=2"), str(tmp_path),
              progress=False)
    assert [d.startswith("2-") for d in os.listdir(tmp_path / "damaged_checkpoints")] == [True]


def test_frozen_parts_stay_put_and_travel_beside_the_state(tmp_path):
    # train.frozen keeps the patch embedding frozen: not optimised, not EMA'd, not in the step
    # checkpoints, written once to frozen/, and a resumed run reads it from there.
    from flax import nnx
    from unigen.training.build import validate
    from unigen.training.loop import train
    frozen = ["--config.train.frozen=('x_embedder/',)", "--config.train.checkpoint_every=2"]
    train(tiny_config("--config.train.steps=2", *frozen), str(tmp_path), progress=False)
    train(tiny_config("--config.train.steps=4", *frozen), str(tmp_path), progress=False)
    state, _ = final_state(tmp_path)
    assert int(state.step) == 4
    assert not any("x_embedder" in str(path) for path, _ in jax.tree_util.tree_flatten_with_path(state)[0])
    assert (tmp_path / "frozen").is_dir()
    run = validate(tiny_config())
    init = nnx.state(run.model_kind.build(run.model_cfg, 0))["x_embedder"]
    import unigen
    model = unigen.from_pretrained(str(tmp_path))
    np.testing.assert_array_equal(np.asarray(model.x_embedder.kernel[...]), np.asarray(init["kernel"][...]))
    assert not np.array_equal(np.asarray(model.final_layer.ada.bias[...]), 0)  # the rest trained
    from unigen.training.build import ConfigError
    with pytest.raises(ConfigError, match="config.train.frozen.*'nothing_here/' matches no parameter"):
        validate(tiny_config("--config.train.frozen=('nothing_here/',)"))


def test_nan_stops_with_last_good_checkpoint_intact(tmp_path):
    from unigen.training.loop import TrainingDiverged, train
    good = tiny_config("--config.train.steps=2", "--config.train.checkpoint_every=2")
    train(good, str(tmp_path), progress=False)
    bad = tiny_config("--config.train.steps=30", "--config.train.checkpoint_every=5", "--config.train.lr=1e30",
                      "--config.train.grad_clip=0.0", "--config.train.warmup_steps=0")
    with pytest.raises(TrainingDiverged, match="last good checkpoint \\(step 2\\)"):
        train(bad, str(tmp_path), progress=False)
    state, _ = final_state(tmp_path)
    assert int(state.step) == 2
    for leaf in jax.tree.leaves(state.params):
        assert np.all(np.isfinite(np.asarray(leaf)))


def test_sample_script_writes_png_of_the_right_size(tmp_path):
    from PIL import Image

    from unigen.infer.sample import main as sample_main
    from unigen.training.loop import train
    train(tiny_config("--config.train.steps=2", "--config.train.checkpoint_every=2"), str(tmp_path / "w"),
          progress=False)
    out = tmp_path / "s" / "samples.npz"
    assert sample_main(["--workdir", str(tmp_path / "w"), "--per-class", "3", "--seed", "1", "--out", str(out),
                        "--steps", "4", "--classes", "0,5,9"]) == 0
    data = np.load(out)
    assert data["images"].shape == (9, 8, 8, 1) and list(data["labels"]) == [0, 0, 0, 5, 5, 5, 9, 9, 9]
    assert np.all(np.abs(data["images"]) <= 1.0)
    img = Image.open(str(out)[:-4] + ".png")
    up, pad = 48 // 8, 8  # nearest x6 upscaling, grey gaps of a sixth of a cell
    side = 3 * (8 * up + pad) + pad
    # the rows' class ids stand in a column at the left of the 3 x 3 cells
    assert img.size[1] == side and side < img.size[0] < side + 100, img.size
    cells = np.asarray(img)[:, -side:]
    assert np.all(cells[:pad] == 128) and np.all(cells[:, -pad:] == 128)  # the grey frame, not a cut cell


def test_imagenet_config_builds_and_runs_one_step(tmp_path):
    from unigen.training.build import ConfigError, validate
    from unigen.training.config import apply_override, load_config_file
    from unigen.training.loop import train
    cfg = load_config_file(os.path.join(ROOT, "configs", "dit_xl2_imagenet256.py"))
    with pytest.raises(ConfigError, match="data.latent_encoder"):
        validate(cfg)
    cfg.data.latent_encoder = ""
    run = validate(cfg)  # the paper's model as configured
    model_cfg, process = run.model_cfg, run.task.process
    assert (model_cfg.depth, model_cfg.hidden_size, model_cfg.num_heads, model_cfg.patch_size) == (28, 1152, 16, 2)
    assert process.loss == "hybrid" and cfg.sample.guided_channels == 3
    for key, value in [("data.name", "digits"), ("data.image_size", 8), ("data.channels", 1),
                       ("data.num_classes", 10), ("model.depth", 1), ("model.hidden_size", 32),
                       ("model.num_heads", 2), ("train.batch_size", 8), ("train.steps", 1),
                       ("train.checkpoint_every", 1), ("train.sample_every", 0), ("mesh.fsdp", 1),
                       ("train.compute_dtype", "float32")]:
        apply_override(cfg, key, value)
    result = train(cfg, str(tmp_path), progress=False)
    assert result["step"] == 1 and np.isfinite(result["loss"])


def test_cli_trains_fsdp_on_eight_fake_devices(tmp_path):
    env = fake_devices_env(8)
    cmd = _train_cmd(tmp_path / "fsdp", 3, 3) + ["--config.mesh.fsdp=8", "--config.mesh.rules=fsdp",
                                                 "--config.model.hidden_size=64", "--config.model.num_heads=4"]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "done: step 3" in out.stdout
    # The checkpoint written by 8 devices (fsdp=8) restores here, on one device.
    state, _ = final_state(tmp_path / "fsdp")
    assert int(state.step) == 3


@pytest.mark.parametrize("model_overrides", [
    ["--config.model.attention_backend='linear'"],
    ["--config.model.attention_backend='block_sparse'", "--config.model.attention_options=(('window', 1), ('block_size', 4))"],
    ["--config.model.block_type='sana'"],
], ids=["linear", "block_sparse", "sana"])
def test_kernel_backends_train_on_digits(tmp_path, model_overrides):
    from unigen.training.loop import train
    cfg = tiny_config("--config.train.steps=60", "--config.train.lr=3e-3", "--config.train.checkpoint_every=60",
                      *model_overrides)
    train(cfg, str(tmp_path), progress=False)
    rows = read_metrics(tmp_path)
    first, last = np.mean([r["loss"] for r in rows[:5]]), np.mean([r["loss"] for r in rows[-5:]])
    assert last < 0.8 * first, (first, last)


def test_grad_accumulation_gives_the_same_update():
    # One key per example (unigen/training/step.py): 4 micro-batches draw the noise, times and
    # label dropout the whole batch would, so the update is the same up to float summation order.
    from unigen.training.build import validate
    from unigen.training.state import create_train_state, make_optimizer
    from unigen.training.step import make_train_step
    cfg = tiny_config("--config.train.lr_schedule=constant")
    run = validate(cfg)
    tx, schedule = make_optimizer(cfg.train)
    graphdef, state, frozen_model = create_train_state(run.model_kind.build(run.model_cfg, 0), tx, 0)
    frozen = {"model": frozen_model, "task": {}}
    rng = np.random.default_rng(0)
    batch = {"image": rng.uniform(-1, 1, (16, 8, 8, 1)).astype(np.float32),
             "label": rng.integers(0, 10, 16).astype(np.int32)}
    out = {}
    for n in (1, 4):  # two steps: optax's schedule gives lr 0 to the first update
        step = jax.jit(make_train_step(graphdef, run.task, tx, schedule, grad_accum=n))
        out[n] = step(step(state, frozen, batch)[0], frozen, batch)
    (s1, m1), (s4, m4) = out[1], out[4]
    # float32 sums in another order: losses and gradient norms agree to 1e-5 relative, and the
    # AdamW update (lr 2e-3 times a ratio of moments) to 1e-6 absolute.
    np.testing.assert_allclose(float(m4["loss"]), float(m1["loss"]), rtol=1e-5)
    np.testing.assert_allclose(float(m4["grad_norm"]), float(m1["grad_norm"]), rtol=1e-5)
    for a, b in zip(jax.tree.leaves(s1.params), jax.tree.leaves(s4.params)):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=0, atol=1e-6)
    moved = max(float(np.abs(np.asarray(a) - np.asarray(p)).max())
                for a, p in zip(jax.tree.leaves(s1.params), jax.tree.leaves(state.params)))
    assert moved > 1e-4  # the step did move the weights


def test_grad_accumulation_and_bf16_compute_run(tmp_path):
    from unigen.training.loop import train
    for name, extra in [("accum", ["--config.train.grad_accum=4"]), ("bf16", ["--config.train.compute_dtype='bfloat16'"])]:
        cfg = tiny_config("--config.train.steps=3", "--config.train.checkpoint_every=3", *extra)
        result = train(cfg, str(tmp_path / name), progress=False)
        assert result["step"] == 3 and np.isfinite(result["loss"]), name
        state, _ = final_state(tmp_path / name)
        # parameters stay float32 whatever the compute dtype
        assert all(leaf.dtype == np.float32 for leaf in jax.tree.leaves(state.params))


def test_lr_multipliers_scale_the_matched_parameters_updates():
    """`train.lr_multipliers` is a per-group learning rate: the matched parameters' AdamW
    updates (weight decay included) are scaled, the others untouched; bad rules name the field."""
    import jax.numpy as jnp
    import ml_collections

    from unigen.training.state import make_optimizer
    base = dict(lr=1e-2, warmup_steps=0, steps=10, lr_schedule="constant", grad_clip=0.0, b1=0.9, b2=0.99,
                weight_decay=0.1)
    params = {"encoder": {"kernel": jnp.ones((3,))}, "decoder": {"kernel": jnp.ones((3,))}}
    grads = {"encoder": {"kernel": jnp.full((3,), 0.5)}, "decoder": {"kernel": jnp.full((3,), 0.5)}}

    def updates(rules):
        tx, _ = make_optimizer(ml_collections.ConfigDict(dict(base, lr_multipliers=rules)))
        return tx.update(grads, tx.init(params), params)[0]

    plain, scaled = updates(()), updates((("^encoder/", 0.25),))
    np.testing.assert_allclose(scaled["encoder"]["kernel"], 0.25 * plain["encoder"]["kernel"], rtol=1e-6)
    np.testing.assert_allclose(scaled["decoder"]["kernel"], plain["decoder"]["kernel"], rtol=1e-6)
    from unigen.errors import ConfigError
    from unigen.training.build import validate
    cfg = tiny_config()
    cfg.train.lr_multipliers = (("^nothing_like_this/", 0.5),)
    with pytest.raises(ConfigError, match="lr_multipliers.*matches no parameter"):
        validate(cfg)
    cfg.train.lr_multipliers = (("^blocks/", -1.0),)
    with pytest.raises(ConfigError, match="train.lr_multipliers"):
        validate(cfg)
