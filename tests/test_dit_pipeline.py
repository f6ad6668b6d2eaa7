"""A diffusers DiT pipeline folder sampled by unigen (unigen/pipelines/) equals diffusers' own
DiTPipeline: a tiny random DiTTransformer2DModel + AutoencoderKL + scheduler saved with
`DiTPipeline.save_pretrained`, the same initial noise through both, the decoded images equal.
Then the scheduler grids against diffusers' `set_timesteps`, the refusals, and the CLI.
"""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from unigen.errors import ConfigError
from unigen.pipelines import DiTPipeline, read_scheduler

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ATOL = 1e-3  # on [0, 1] images
LABELS = [207, 360, 1, 999]
# What facebook/DiT-XL-2-256's scheduler/scheduler_config.json sets (diffusers' DDIMScheduler
# defaults otherwise: leading spacing, steps_offset 0).
RELEASED_DDIM = dict(num_train_timesteps=1000, beta_schedule="linear", beta_start=0.0001, beta_end=0.02,
                     clip_sample=False, set_alpha_to_one=True, prediction_type="epsilon")


def _references():
    """torch and diffusers, the test-only oracles (the tests that need them skip without them)."""
    return pytest.importorskip("torch"), pytest.importorskip("diffusers")


def _randomize(module, seed, scale):
    torch, _ = _references()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name != "pos_embed":  # the fixed sin-cos table
                p.copy_(torch.randn(p.shape, generator=g) * scale)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """(diffusers DiTPipeline, its saved folder): DiT with learned sigma (out 2C) and the 1000
    ImageNet classes (diffusers' null label is 1000), 8x8x4 latents, a VAE decoding to 16x16x3."""
    torch, diffusers = _references()
    transformer = diffusers.DiTTransformer2DModel(
        num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8, num_layers=2, patch_size=2,
        sample_size=8, num_embeds_ada_norm=1000, norm_type="ada_norm_zero", activation_fn="gelu-approximate",
        attention_bias=True)
    _randomize(transformer, 0, 0.2)  # adaLN-Zero starts at zero: random weights make every path count
    torch.manual_seed(1)
    vae = diffusers.AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(16, 32), layers_per_block=1, latent_channels=4, norm_num_groups=8, sample_size=16)
    with torch.no_grad():  # GroupNorms away from (1, 0), so a misplaced scale or bias shows
        for m in vae.modules():
            if isinstance(m, torch.nn.GroupNorm):
                m.weight.copy_(1 + 0.3 * torch.randn_like(m.weight))
                m.bias.copy_(0.3 * torch.randn_like(m.bias))
    transformer.eval(), vae.eval()
    pipe = diffusers.DiTPipeline(transformer=transformer, vae=vae,
                                 scheduler=diffusers.DDIMScheduler(**RELEASED_DDIM))
    path = tmp_path_factory.mktemp("dit_pipeline") / "pipe"
    pipe.save_pretrained(str(path))
    return pipe, path


def _noise(seed=0):
    return np.random.RandomState(seed).randn(len(LABELS), 4, 8, 8).astype(np.float32)  # NCHW, as diffusers draws


def _diffusers_images(pipe, scheduler, noise, steps, scale, monkeypatch):
    torch, _ = _references()
    from diffusers.pipelines.dit import pipeline_dit
    pipe.scheduler = scheduler
    # DiTPipeline draws its latents with randn_tensor: hand it the shared noise instead.
    monkeypatch.setattr(pipeline_dit, "randn_tensor", lambda *a, **k: torch.from_numpy(noise.copy()))
    return pipe(LABELS, num_inference_steps=steps, guidance_scale=scale, output_type="np").images


@pytest.fixture(scope="module")
def ours(folder):
    return DiTPipeline.from_pretrained(str(folder[1]))


# (scheduler class, config fields beyond the released DDIM's, steps, guidance scale)
CASES = [
    ("DDIMScheduler", {}, 5, 4.0),                                       # as released, guided
    ("DDIMScheduler", {"steps_offset": 1}, 6, 1.0),                      # 1000 // 6: no stride rule; unguided
    ("DPMSolverMultistepScheduler", {}, 6, 4.0),                         # diffusers' from_config(DDIM) swap
    ("DPMSolverMultistepScheduler", {"timestep_spacing": "trailing"}, 5, 2.5),
]


@pytest.mark.parametrize("name,fields,steps,scale", CASES)
def test_images_equal_diffusers(folder, ours, monkeypatch, name, fields, steps, scale):
    pipe, _ = folder
    _, diffusers = _references()
    config = {**RELEASED_DDIM, **fields}
    scheduler = getattr(diffusers, name).from_config(config)
    noise = _noise(steps)
    ref = _diffusers_images(pipe, scheduler, noise, steps, scale, monkeypatch)
    unigen_pipe = DiTPipeline(ours.transformer, ours.vae, read_scheduler(config, class_name=name, in_channels=4))
    got = unigen_pipe(LABELS, num_inference_steps=steps, guidance_scale=scale, latents=noise.transpose(0, 2, 3, 1))
    assert got.shape == ref.shape == (len(LABELS), 16, 16, 3)
    unclipped = (ref > 0.01) & (ref < 0.99)
    assert unclipped.mean() > 0.5, "the test VAE saturates: the comparison would be weak"
    assert np.abs(got - ref).max() <= ATOL
    # Not a trivially shared output: other labels (or no guidance) give other images.
    other = unigen_pipe(LABELS[::-1], num_inference_steps=steps, guidance_scale=scale,
                        latents=noise.transpose(0, 2, 3, 1))
    assert np.abs(other - got).max() > 20 * ATOL


def test_from_pretrained_reads_the_folder(folder, ours):
    assert ours.scheduler.class_name == "DDIMScheduler" and ours.scheduler.timestep_spacing == "leading"
    assert ours.transformer.cfg.learn_sigma and ours.null_label == 1000
    _, diffusers = _references()
    # Read as another class, the saved fields that class has are kept, as in diffusers'
    # `DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)` after loading the folder: this
    # folder's DDIM config (written by this diffusers) names its "leading" spacing.
    dpm = DiTPipeline.from_pretrained(str(folder[1]), scheduler="dpm_solver_2m")
    saved = diffusers.DDIMScheduler.from_pretrained(str(folder[1] / "scheduler"))
    ref = diffusers.DPMSolverMultistepScheduler.from_config(saved.config)
    assert dpm.scheduler.class_name == "DPMSolverMultistepScheduler"
    assert dpm.scheduler.timestep_spacing == ref.config.timestep_spacing == "leading"
    ref.set_timesteps(9)
    np.testing.assert_array_equal(dpm.scheduler.timesteps(9), ref.timesteps.numpy())


@pytest.mark.parametrize("name", ["DDIMScheduler", "DPMSolverMultistepScheduler"])
def test_timesteps_are_diffusers_own(name):
    """Scheduler.timesteps(n) is what the diffusers class calls the network at; where unigen's
    sampler would step differently (DDIM: the next timestep is not t - T // n) it refuses."""
    cls = getattr(_references()[1], name)
    for spacing in ("leading", "trailing", "linspace"):
        for offset in (0, 1):
            for n in (2, 3, 5, 7, 20, 50, 250):
                config = {**RELEASED_DDIM, "timestep_spacing": spacing, "steps_offset": offset}
                ref = cls.from_config(config)
                ref.set_timesteps(n)
                ref_t = ref.timesteps.numpy()
                sched = read_scheduler(config, class_name=name)
                if name == "DDIMScheduler":
                    prev = ref_t - 1000 // n
                    consistent = bool(np.all(prev[:-1] == ref_t[1:]) and prev[-1] < 0)
                    if not consistent:
                        with pytest.raises(ConfigError, match="timestep_spacing"):
                            sched.timesteps(n)
                        continue
                np.testing.assert_array_equal(sched.timesteps(n), ref_t, err_msg=f"{spacing} +{offset}, {n} steps")


@pytest.mark.parametrize("name,fields,named", [
    ("DDIMScheduler", {"clip_sample": True}, "clip_sample"),
    ("DDIMScheduler", {"set_alpha_to_one": False}, "set_alpha_to_one"),
    ("DDIMScheduler", {"prediction_type": "v_prediction"}, "prediction_type"),
    ("DDIMScheduler", {"beta_end": 0.012}, "beta_end"),
    ("DDIMScheduler", {"trained_betas": [0.1] * 1000}, "trained_betas"),
    ("DDIMScheduler", {"thresholding": True}, "thresholding"),
    ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True}, "use_karras_sigmas"),
    ("DPMSolverMultistepScheduler", {"solver_order": 3}, "solver_order"),
    ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"}, "algorithm_type"),
    ("DPMSolverMultistepScheduler", {"final_sigmas_type": "sigma_min"}, "final_sigmas_type"),
    ("DPMSolverMultistepScheduler", {"solver_type": "heun"}, "solver_type"),
    ("DPMSolverMultistepScheduler", {"variance_type": "learned_range"}, "variance_type"),
    ("DDPMScheduler", {}, "DDPMScheduler"),
])
def test_unsupported_scheduler_fields_are_refused_by_name(name, fields, named):
    with pytest.raises(ConfigError, match=named):
        read_scheduler({**RELEASED_DDIM, "_class_name": name, **fields}, in_channels=4)


def test_fields_diffusers_ignores_do_not_stop_a_read():
    _, diffusers = _references()
    # DDIM-only fields in a config read as DPM-Solver (diffusers' from_config ignores them too),
    # and DPM-Solver's clipping bound, which leaves the linear schedule untouched.
    sched = read_scheduler({**RELEASED_DDIM, "clip_sample": True, "lambda_min_clipped": -10.0},
                           class_name="DPMSolverMultistepScheduler")
    ref = diffusers.DPMSolverMultistepScheduler(lambda_min_clipped=-10.0)
    ref.set_timesteps(10)
    np.testing.assert_array_equal(sched.timesteps(10), ref.timesteps.numpy())
    clipped = read_scheduler({**RELEASED_DDIM, "lambda_min_clipped": -4.0}, class_name="DPMSolverMultistepScheduler")
    ref = diffusers.DPMSolverMultistepScheduler(lambda_min_clipped=-4.0)
    ref.set_timesteps(10)
    np.testing.assert_array_equal(clipped.timesteps(10), ref.timesteps.numpy())


def test_bad_calls_fail_clearly(ours):
    with pytest.raises(ConfigError, match="0..999"):
        ours([1000], num_inference_steps=2)
    with pytest.raises(ConfigError, match="latents shape"):
        ours([1, 2], num_inference_steps=2, latents=np.zeros((2, 4, 8, 8), np.float32))
    with pytest.raises(ConfigError, match="num_inference_steps=1001"):
        ours([1], num_inference_steps=1001)
    with pytest.raises(ConfigError, match="id2label"):
        ours(["golden retriever"])


def test_cli_writes_grid_images_and_npz(folder, tmp_path):
    out = tmp_path / "out" / "dit.npz"
    cmd = [sys.executable, os.path.join(ROOT, "infer", "sample.py"), "--pretrained", str(folder[1]),
           "--class", "207", "--class", "360", "--per-class", "2", "--steps", "4", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = np.load(out)
    assert data["images"].shape == (4, 16, 16, 3) and data["images"].dtype == np.float32  # the VAE's output size
    assert -1.0 <= data["images"].min() < 0.0 < data["images"].max() <= 1.0  # [-1, 1], like every sample.py npz
    np.testing.assert_array_equal(data["labels"], [207, 207, 360, 360])
    # The npz holds the pipeline's images, not latents: the same call through the API.
    api = DiTPipeline.from_pretrained(str(folder[1]))([207, 207, 360, 360], num_inference_steps=4, seed=0)
    np.testing.assert_allclose(data["images"], api * 2 - 1, atol=1e-5)
    from PIL import Image
    grid = Image.open(out.with_suffix(".png"))
    assert grid.size[1] > 2 * 16 and grid.size[0] > 2 * 16  # two labelled rows of two upscaled samples
    singles = sorted(os.listdir(tmp_path / "out" / "dit_images"))
    assert singles == ["0000_class207.png", "0001_class207.png", "0002_class360.png", "0003_class360.png"]
    assert Image.open(tmp_path / "out" / "dit_images" / singles[0]).size == (16, 16)


def test_cli_folder_without_vae_needs_vae(folder, tmp_path, capsys):
    from unigen.infer.sample import main

    bare = tmp_path / "no_vae"
    shutil.copytree(folder[1], bare, ignore=shutil.ignore_patterns("vae"))
    index = json.loads((bare / "model_index.json").read_text())
    index["vae"] = [None, None]
    (bare / "model_index.json").write_text(json.dumps(index))
    args = ["--pretrained", str(bare), "--class", "3", "--out", str(tmp_path / "x.npz")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "no vae/" in err and "--vae" in err
    # --vae supplies one (here the original folder's); then it loads.
    pipe = DiTPipeline.from_pretrained(str(bare), vae=str(folder[1] / "vae"))
    assert pipe.vae.cfg.latent_channels == 4
    assert main(args[:-2] + ["--guided-channels", "3", "--out", str(tmp_path / "x.npz")]) == 2
    assert "--guided-channels" in capsys.readouterr().err
    assert main(["--pretrained", str(folder[1]), "--out", str(tmp_path / "y.npz")]) == 2
    assert "--class" in capsys.readouterr().err


def test_cli_bare_dit_still_samples_with_class_and_classes(folder, tmp_path):
    # --pretrained on a transformer folder alone: unigen's own DiT Gaussian diffusion, as before;
    # --class joins --classes (after it, in order).
    from unigen.infer.sample import main

    out = tmp_path / "bare.npz"
    assert main(["--pretrained", str(folder[1] / "transformer"), "--classes", "1", "--class", "5", "--class", "7",
                 "--per-class", "1", "--steps", "2", "--out", str(out)]) == 0
    data = np.load(out)
    assert data["images"].shape == (3, 8, 8, 4)  # latents: a bare DiT has no VAE
    np.testing.assert_array_equal(data["labels"], [1, 5, 7])


def test_hub_id_samples_like_the_folder(folder, tmp_path, monkeypatch):
    # The pipeline as a hub repo in a cache laid out as huggingface_hub lays it out (refs/main ->
    # snapshots/<commit>/...), offline: `--pretrained org/name` and DiTPipeline.from_pretrained(id)
    # read that snapshot and sample what the folder samples.
    from unigen.infer.sample import main

    commit = "c" * 40
    repo = tmp_path / "hub" / "models--someorg--tiny-dit-pipeline"
    shutil.copytree(folder[1], repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    by_id = DiTPipeline.from_pretrained("someorg/tiny-dit-pipeline")
    np.testing.assert_array_equal(by_id([207], num_inference_steps=3, seed=1),
                                  DiTPipeline.from_pretrained(str(folder[1]))([207], num_inference_steps=3, seed=1))
    out = tmp_path / "id.npz"
    assert main(["--pretrained", "someorg/tiny-dit-pipeline", "--revision", commit, "--class", "207",
                 "--per-class", "1", "--steps", "3", "--out", str(out)]) == 0
    np.testing.assert_allclose(np.load(out)["images"], by_id([207], num_inference_steps=3, seed=0) * 2 - 1, atol=1e-6)
