"""Behaviour fingerprints of every config in configs/, in quick mode (issue 33: a refactor of the
trainer, tasks or configs must leave what each job computes unchanged).

Each config trains the README's quick model (tests/test_readme.py's QUICK_TRAIN / QUICK_MODEL /
QUICK_DIT) for 20 steps, logging every step, then a 2-step sample at seed 0 through
infer/sample.py (or, for the tokenizers and the representation encoder, which do not sample,
their encoding and reconstruction of four fixed digits through `unigen.from_pretrained`). The
per-step losses and a few statistics of the samples are compared with tests/fingerprints.json,
recorded at the commit it names. Prerequisites are built tiny, as the families' own tests do: a
random-weight LZN encoder (test_unidiffuser.py), a fake imagenet2012 and random diffusers VAE
(test_latents.py); the latent-diffusion configs train on the VA-VAE / RAE runs of this file, as
the README's chain does (so a VA-VAE difference also shows as a LightningDiT one: read the first).

Rerecord (only for an intended change of numbers, saying why in the commit):
    UNIGEN_RECORD_FINGERPRINTS=1 pytest -n 0 tests/test_fingerprints.py
"""

import glob
import json
import os
import subprocess

import numpy as np
import pytest

from test_latents import _diffusers_vae, _imagenet_config
from test_readme import quick_train
from test_text_to_image import needs_minilm
from test_unidiffuser import _tiny_lzn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FINGERPRINTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fingerprints.json")
RECORD = os.environ.get("UNIGEN_RECORD_FINGERPRINTS") == "1"
STEPS = 20
# Two runs on one machine agree bit for bit. The same math summed in another order (the batch
# split over 2 fake devices: per-device partial sums, then an all-reduce) moved the losses by at
# most 1.2e-5 relative over 20 steps (lzn_repr; 5e-6 lzn_cls, <= 1.2e-6 the others) and the
# sample values by at most 1e-6 absolute (the centred LZN anchors 9e-6); the tolerances leave
# 8-100x room for that noise, far below what a change of behaviour (another key, time draw,
# weighting, batch order) moves: those change losses by percents and samples by tenths.
LOSS_RTOL = 1e-4
SAMPLE_RTOL, SAMPLE_ATOL = 1e-3, 1e-4

# The arguments of infer/sample.py for each generative config (2 steps, seed 0 added).
SAMPLE_ARGS = {
    "dit_digits.py": ["--per-class", "1"],
    "lightningdit_digits.py": ["--per-class", "1"],
    "ditdh_digits.py": ["--per-class", "1"],
    "lzn_gen_digits.py": ["--per-class", "4"],
    "lzn_cls_digits.py": ["--per-class", "1"],
    "mmdit_digits.py": ["--prompt", "a handwritten 7", "--per-prompt", "2"],
    "unidiffuser_digits.py": ["--mode", "joint", "--num", "4"],
    "dit_xl2_imagenet256.py": ["--per-class", "1", "--classes", "1,7"],
}
TOKENIZERS = ("lzn_repr_digits.py", "vavae_digits.py", "rae_digits.py")


# ---------------------------------------------------------------- fingerprints
def summary(array) -> dict:
    """mean, std and 4 elements at fixed places of an array (float64 sums: no noise of their own)."""
    a = np.asarray(array, np.float64).ravel()
    n = a.size
    return {"shape": list(np.shape(array)), "mean": float(a.mean()), "std": float(a.std()),
            "values": [float(a[i * n // 5]) for i in range(1, 5)]}


def read_losses(workdir) -> list[float]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1)), "expected one metrics row per step"
    return [r["loss"] for r in rows]


def sample_fingerprint(workdir, args, tmp_path) -> dict:
    from unigen.infer.sample import main as sample_main
    out = str(tmp_path / "samples.npz")
    assert sample_main(["--workdir", workdir, "--out", out, "--steps", "2", "--seed", "0", *args]) == 0
    arrays = np.load(out)
    return {k: summary(arrays[k]) for k in ("images", "text") if k in arrays}


def fixed_digits() -> np.ndarray:
    """The first 4 of scikit-learn's digits as 8x8x1 images in [-1, 1] (independent of unigen.data)."""
    from sklearn.datasets import load_digits
    return (load_digits().images[:4, :, :, None] / 8.0 - 1.0).astype(np.float32)


def tokenizer_fingerprint(name, workdir) -> dict:
    import jax.numpy as jnp

    import unigen
    x = jnp.asarray(fixed_digits())
    if name == "lzn_repr_digits.py":
        # Centred over the 4 digits: the contrastive loss is blind to a shift of all anchors, so
        # the gradient of the head's bias is float noise, which Adam turns into steps of ~lr (the
        # raw anchors moved by 2e-2 when the batch was summed in another order; centred, 1e-5).
        anchors = unigen.from_pretrained(workdir, component="encoder")(x)
        return {"centred_anchors": summary(anchors - anchors.mean(axis=0))}
    if name == "vavae_digits.py":
        ae = unigen.from_pretrained(workdir, component="autoencoder")
        mean, _ = ae.encode(x)
        return {"latents": summary(mean), "reconstruction": summary(ae.decode(mean))}
    rae = unigen.from_pretrained(workdir)  # RAE: images in [0, 1]
    z = rae.encode((x + 1.0) / 2.0)
    return {"latents": summary(z), "reconstruction": summary(rae.decode(z))}


def head_commit() -> str:
    out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "unigen", "configs"], cwd=ROOT,
                           capture_output=True, text=True).stdout.strip()
    return out.stdout.strip() + (" (with uncommitted changes in unigen/ or configs/)" if dirty else "")


def recorded() -> dict:
    if not os.path.exists(FINGERPRINTS):
        return {"configs": {}}
    with open(FINGERPRINTS) as f:
        return json.load(f)


def check(name, fingerprint):
    if RECORD:
        data = recorded()
        data["commit"] = head_commit()
        data["how"] = ("tests/test_fingerprints.py: 20 quick-mode steps (log_every=1), then a 2-step sample at "
                       "seed 0 (or the tokenizer's encoding of 4 fixed digits); UNIGEN_RECORD_FINGERPRINTS=1 rewrites")
        data["configs"][name] = fingerprint
        data["configs"] = dict(sorted(data["configs"].items()))
        with open(FINGERPRINTS, "w") as f:
            json.dump(data, f, indent=1)
            f.write("\n")
        return
    want = recorded()["configs"].get(name)
    assert want is not None, f"no fingerprint of {name}: record with UNIGEN_RECORD_FINGERPRINTS=1"
    np.testing.assert_allclose(fingerprint["losses"], want["losses"], rtol=LOSS_RTOL,
                               err_msg=f"{name}: the first {STEPS} losses changed")
    assert set(fingerprint["outputs"]) == set(want["outputs"]), name
    for key, stats in want["outputs"].items():
        got = fingerprint["outputs"][key]
        assert got["shape"] == stats["shape"], (name, key)
        np.testing.assert_allclose([got["mean"], got["std"], *got["values"]],
                                   [stats["mean"], stats["std"], *stats["values"]],
                                   rtol=SAMPLE_RTOL, atol=SAMPLE_ATOL, err_msg=f"{name}: {key} changed")


# ---------------------------------------------------------------- runs
def quick_config(name, **extra):
    """configs/<name> with the README's quick-mode overrides, 20 steps, a metrics row per step."""
    from unigen.training.config import apply_override, load_config_file, parse_overrides
    path = os.path.join(ROOT, "configs", name)
    cfg = load_config_file(path)
    overrides = dict(parse_overrides(quick_train(["python", "train/train.py", "--config", path]))[0])
    overrides.update({"train.steps": STEPS, "train.log_every": 1, "train.checkpoint_every": STEPS}, **extra)
    for key, value in overrides.items():
        apply_override(cfg, key, value)
    return cfg


class Runs:
    """Each config trained once per module, in its own work dir; later configs take earlier ones."""

    def __init__(self, tmp):
        self.tmp, self.done = tmp, {}

    def get(self, name, make_config):
        if name not in self.done:
            from unigen.training.loop import train
            workdir = str(self.tmp / name[:-3])
            result = train(make_config(), workdir, progress=False)
            assert result["step"] == STEPS
            self.done[name] = workdir
        return self.done[name]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return Runs(tmp_path_factory.mktemp("fingerprints"))


@pytest.fixture(scope="module")
def lzn_encoder(tmp_path_factory):
    """A random-weight LZN encoder shaped as the README's quick lzn_repr run (width 16, depth 1,
    2 heads, 64-d anchors): the frozen part of the VA-VAE, RAE and UniDiffuser configs."""
    return _tiny_lzn(tmp_path_factory.mktemp("lzn") / "encoder", latent_dim=64)


def workdir_of(name, runs, lzn_encoder, tmp_path_factory):
    if name == "vavae_digits.py":
        make = lambda: quick_config(name, **{"vavae.foundation": lzn_encoder})  # noqa: E731
    elif name == "rae_digits.py":
        make = lambda: quick_config(name, **{"rae.encoder": lzn_encoder})  # noqa: E731
    elif name == "unidiffuser_digits.py":
        make = lambda: quick_config(name, **{"unidiffuser.clip_encoder": lzn_encoder})  # noqa: E731
    elif name == "lightningdit_digits.py":
        tok = workdir_of("vavae_digits.py", runs, lzn_encoder, tmp_path_factory)
        make = lambda: quick_config(name, **{"data.latent_encoder": tok})  # noqa: E731
    elif name == "ditdh_digits.py":
        tok = workdir_of("rae_digits.py", runs, lzn_encoder, tmp_path_factory)
        make = lambda: quick_config(name, **{"data.latent_encoder": tok})  # noqa: E731
    elif name == "dit_xl2_imagenet256.py":
        def make():
            # test_latents.py's tiny ImageNet job (32x32 RGB, a random 4-channel VAE, the DiT shrunk as
            # QUICK_DIT, one device, float32: bfloat16 rounding would swamp the losses' tolerance).
            from fake_imagenet import write_fake_imagenet
            tmp = tmp_path_factory.mktemp("imagenet")
            data = write_fake_imagenet(str(tmp / "tfds"))
            vae = _diffusers_vae(tmp / "vae", seed=0)
            return _imagenet_config(data, vae, str(tmp / "store"), **{
                "train.steps": STEPS, "train.log_every": 1, "train.checkpoint_every": STEPS,
                "train.sample_every": 0, "train.batch_size": 8})
    else:
        make = lambda: quick_config(name)  # noqa: E731
    return runs.get(name, make)


CONFIGS = sorted(os.path.basename(p) for p in glob.glob(os.path.join(ROOT, "configs", "*.py"))
                 if os.path.basename(p) != "common.py")  # the shared sections, not a run
NEEDS_TEXT = ("mmdit_digits.py", "unidiffuser_digits.py")


def test_every_config_has_a_fingerprint():
    assert set(SAMPLE_ARGS) | set(TOKENIZERS) == set(CONFIGS), "give each config in configs/ its fingerprint here"
    if not RECORD:
        assert set(recorded()["configs"]) == set(CONFIGS), \
            "record the new config's fingerprint: UNIGEN_RECORD_FINGERPRINTS=1 pytest -n 0 tests/test_fingerprints.py"


@pytest.mark.parametrize("name", [pytest.param(n, marks=needs_minilm) if n in NEEDS_TEXT else n for n in CONFIGS])
def test_quick_mode_fingerprint(name, runs, lzn_encoder, tmp_path_factory, tmp_path):
    workdir = workdir_of(name, runs, lzn_encoder, tmp_path_factory)
    outputs = (tokenizer_fingerprint(name, workdir) if name in TOKENIZERS
               else sample_fingerprint(workdir, SAMPLE_ARGS[name], tmp_path))
    check(name, {"losses": read_losses(workdir), "outputs": outputs})
