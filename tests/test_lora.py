"""LoRA on unigen's SD3 (MMDiT) and Flux: adapters, merging, and diffusers / PEFT files.

Oracles: tiny random diffusers SD3Transformer2DModel / FluxTransformer2DModel. A unigen adapter
saved with `save_lora` is applied by diffusers' own pipeline loader (the pipeline classes'
`load_lora_weights`, through PEFT layers, not merged) and must give unigen's merged outputs; a
PEFT adapter saved by diffusers' `save_lora_weights` must load into unigen with the same
outputs. The parity tests need torch, diffusers and peft (skipped without them).
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import unigen
import unigen.convert.flux  # noqa: F401  (registers the diffusers Flux loader)
import unigen.convert.mmdit  # noqa: F401  (registers the diffusers SD3 loader)
from unigen.errors import WeightError
from unigen.lora import (DEFAULT_TARGETS, all_targets, apply_lora, init_lora, load_lora, merge, remove_lora,
                         save_lora, select_targets, unmerge)
from unigen.convert.unigen_format import module_to_flat
from unigen.models import get_model_kind
from unigen.models.flux import latent_image_ids, pack_latents

RTOL = 1e-4
SD3 = dict(sample_size=8, patch_size=2, in_channels=4, out_channels=4, num_layers=3, attention_head_dim=8,
           num_attention_heads=2, joint_attention_dim=12, caption_projection_dim=16, pooled_projection_dim=10,
           pos_embed_max_size=10, qk_norm="rms_norm", dual_attention_layers=(0,))  # runs: dual, plain, pre-only
FLUX = dict(patch_size=1, in_channels=64, num_layers=1, num_single_layers=2, attention_head_dim=16,
            num_attention_heads=2, joint_attention_dim=12, pooled_projection_dim=10, guidance_embeds=True,
            axes_dims_rope=(4, 6, 6))


def max_rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / (np.abs(b).max() + 1e-12))


def _randomize(model, seed, std):
    import torch
    torch.manual_seed(seed)
    with torch.no_grad():  # zero-init / unit-norm defaults would hide misplaced weights
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * std)
    return model.eval()


def diffusers_model(kind, folder, seed=0):
    pytest.importorskip("torch")
    diffusers = pytest.importorskip("diffusers")
    cls = diffusers.SD3Transformer2DModel if kind == "sd3" else diffusers.FluxTransformer2DModel
    model = _randomize(cls(**(SD3 if kind == "sd3" else FLUX)), seed, 0.05 if kind == "sd3" else 0.1)
    model.save_pretrained(str(folder))
    return model


def inputs(kind, seed=0):
    rs = np.random.RandomState(seed)
    if kind == "sd3":
        return dict(x=rs.randn(2, 6, 10, 4).astype(np.float32), t=rs.uniform(0, 1000, 2).astype(np.float32),
                    context=rs.randn(2, 5, 12).astype(np.float32), pooled=rs.randn(2, 10).astype(np.float32))
    latents = jnp.asarray(rs.randn(2, 6, 10, 16).astype(np.float32))
    return dict(hidden_states=np.asarray(pack_latents(latents)), encoder_hidden_states=rs.randn(2, 5, 12).astype(
        np.float32), pooled_projections=rs.randn(2, 10).astype(np.float32),
        timestep=rs.uniform(0, 1, 2).astype(np.float32), img_ids=latent_image_ids(3, 5),
        txt_ids=rs.randint(0, 7, (5, 3)).astype(np.float32), guidance=rs.uniform(1, 5, 2).astype(np.float32))


def run_ours(model, args):
    graphdef, state = nnx.split(model)
    fn = jax.jit(lambda state, args: nnx.merge(graphdef, state)(**args))
    return np.asarray(fn(state, {k: jnp.asarray(v) for k, v in args.items()}))


def run_ref(kind, model, args):
    import torch
    with torch.no_grad():
        if kind == "sd3":
            out = model(torch.from_numpy(args["x"]).permute(0, 3, 1, 2), torch.from_numpy(args["context"]),
                        torch.from_numpy(args["pooled"]), torch.from_numpy(args["t"])).sample
            return out.permute(0, 2, 3, 1).numpy()
        return model(**{k: torch.from_numpy(np.array(v)) for k, v in args.items()}).sample.numpy()


def host(kind, transformer):
    """The pipeline class' LoRA mixin on an object holding just the transformer (no text encoders):
    `load_lora_weights` / `save_lora_weights` as `pipe.load_lora_weights(file)` runs them."""
    diffusers = pytest.importorskip("diffusers")
    mixin = diffusers.loaders.SD3LoraLoaderMixin if kind == "sd3" else diffusers.loaders.FluxLoraLoaderMixin

    class Host(mixin):
        text_encoder = text_encoder_2 = None
        lora_scale = 1.0
        components = {}
        hf_device_map = None

        def __init__(self):
            self.transformer = transformer
    return Host()


def randomized(lora, seed, std=0.2):
    """The same adapters with random B (a fresh adapter's B is zero, a no-op)."""
    rs = np.random.RandomState(seed)
    return lora.replace({m: {"a": p["a"], "b": jnp.asarray(rs.randn(*p["b"].shape).astype(np.float32) * std)}
                         for m, p in lora.params.items()})


# ---------------------------------------------------------------- the target table
@pytest.mark.parametrize("kind", ["sd3", "flux"])
def test_targets_are_exactly_diffusers_linears(tmp_path, kind):
    import torch
    ref = diffusers_model(kind, tmp_path / kind)
    ours = unigen.from_pretrained(str(tmp_path / kind))
    linears = {n: (m.in_features, m.out_features) for n, m in ref.named_modules() if isinstance(m, torch.nn.Linear)}
    targets = all_targets(ours)
    assert {m: (t.d_in, t.d_out) for m, t in targets.items()} == linears
    default = select_targets(ours, DEFAULT_TARGETS)
    assert all(".attn" in m for m in default) and any(m.endswith("attn.to_q") for m in default)
    if kind == "sd3":
        assert "transformer_blocks.0.attn2.to_out.0" in default and "transformer_blocks.2.attn.to_add_out" not in targets
    with pytest.raises(ValueError, match="matches no Linear"):
        select_targets(ours, ["to_qq"])


# ---------------------------------------------------------------- unigen -> diffusers
@pytest.mark.parametrize("kind,patterns", [("sd3", (".*",)), ("flux", (".*",))], ids=["sd3_all", "flux_all"])
def test_unigen_lora_loads_in_diffusers(tmp_path, kind, patterns):
    pytest.importorskip("peft")
    ref = diffusers_model(kind, tmp_path / kind, seed=1)
    ours = unigen.from_pretrained(str(tmp_path / kind))
    args = inputs(kind)
    base = run_ours(ours, args)
    lora = randomized(init_lora(ours, rank=3, alpha=6.0, targets=patterns, seed=2), seed=3)  # scale 2
    save_lora(str(tmp_path / "lora.safetensors"), lora, kind)
    host(kind, ref).load_lora_weights(str(tmp_path / "lora.safetensors"))
    expected = run_ref(kind, ref, args)
    apply_lora(ours, lora)
    got = run_ours(ours, args)
    assert max_rel_err(got, base) > 1e-2  # the adapter does change the outputs
    err = max_rel_err(got, expected)
    assert err <= RTOL, err
    remove_lora(ours, lora)
    assert max_rel_err(run_ours(ours, args), base) <= RTOL


# ---------------------------------------------------------------- diffusers / PEFT -> unigen
PEFT_TARGETS = {"sd3": ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "to_add_out", "ff.net.2", "norm1.linear"],
                "flux": ["to_q", "to_v", "to_out.0", "add_k_proj", "proj_out", "proj_mlp", "ff_context.net.0.proj"]}


@pytest.mark.parametrize("kind", ["sd3", "flux"])
def test_peft_lora_saved_by_diffusers_loads_in_unigen(tmp_path, kind):
    pytest.importorskip("peft")
    import torch
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict
    ref = diffusers_model(kind, tmp_path / kind, seed=4)
    ours = unigen.from_pretrained(str(tmp_path / kind))
    # mixed ranks / alphas, as rank_pattern / alpha_pattern in the file's metadata
    ref.add_adapter(LoraConfig(r=4, lora_alpha=2, target_modules=PEFT_TARGETS[kind], init_lora_weights=False,
                               rank_pattern={"to_v": 2}, alpha_pattern={"to_q": 5}))
    torch.manual_seed(5)
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn_like(p) * 0.2)
    args = inputs(kind, seed=6)
    expected = run_ref(kind, ref, args)
    assert max_rel_err(expected, run_ours(ours, args)) > 20 * RTOL  # the adapter does change the outputs
    pipe_cls = type(host(kind, ref)).__mro__[1]
    pipe_cls.save_lora_weights(str(tmp_path / "out"), transformer_lora_layers=get_peft_model_state_dict(ref),
                               transformer_lora_adapter_metadata=ref.peft_config["default"].to_dict())
    lora = load_lora(str(tmp_path / "out"), ours)
    assert {lora.rank(m) for m in lora.params} == {2, 4}
    assert any(lora.scale(m) == 5 / 4 for m in lora.params) and any(lora.scale(m) == 0.5 for m in lora.params)
    apply_lora(ours, lora)
    err = max_rel_err(run_ours(ours, args), expected)
    assert err <= RTOL, err


def test_flux_alpha_keys_without_metadata(tmp_path):
    """Flux files from other trainers carry `<module>.alpha` scalars; diffusers' Flux loader reads
    them as network alphas, and so does load_lora."""
    pytest.importorskip("peft")
    import torch
    from safetensors.torch import save_file
    ref = diffusers_model("flux", tmp_path / "flux", seed=7)
    ours = unigen.from_pretrained(str(tmp_path / "flux"))
    g = torch.Generator().manual_seed(8)
    sd = {}
    for m in ("transformer_blocks.0.attn.to_k", "single_transformer_blocks.1.proj_out"):
        d_in = 32 * 5 if m.endswith("proj_out") else 32
        sd[f"transformer.{m}.lora_A.weight"] = torch.randn(3, d_in, generator=g) * 0.2
        sd[f"transformer.{m}.lora_B.weight"] = torch.randn(32, 3, generator=g) * 0.2
        sd[f"transformer.{m}.alpha"] = torch.tensor(1.5)
    save_file(sd, str(tmp_path / "alpha.safetensors"))
    args = inputs("flux", seed=9)
    base = run_ref("flux", ref, args)
    host("flux", ref).load_lora_weights(str(tmp_path / "alpha.safetensors"))
    expected = run_ref("flux", ref, args)
    lora = load_lora(str(tmp_path / "alpha.safetensors"), ours)
    assert all(abs(lora.scale(m) - 0.5) < 1e-7 for m in lora.params)
    apply_lora(ours, lora)
    got = run_ours(ours, args)
    assert max_rel_err(expected, base) > 1e-2
    err = max_rel_err(got, expected)
    assert err <= RTOL, err


# ---------------------------------------------------------------- functional merge, training, scan
def test_merge_is_functional_and_differentiable_in_the_adapter_only(tmp_path):
    diffusers_model("sd3", tmp_path / "sd3", seed=10)
    ours = unigen.from_pretrained(str(tmp_path / "sd3"))
    scanned = unigen.from_pretrained(str(tmp_path / "sd3"), scan_layers=True)
    args = {k: jnp.asarray(v) for k, v in inputs("sd3", seed=11).items()}
    lora = init_lora(ours, rank=2, seed=12)  # attention q/k/v/out
    graphdef, state = nnx.split(ours)
    before = jax.tree.map(np.asarray, nnx.to_pure_dict(state))

    def loss(lora, state):
        return jnp.mean(nnx.merge(graphdef, merge(state, lora))(**args) ** 2)
    grads = jax.jit(jax.grad(loss))(lora, state)
    # B starts at zero: the merged model is the base, A's gradient is zero and B's is not, except
    # for the pre-only last block's context queries, whose attention output is dropped
    unused = "transformer_blocks.2.attn.add_q_proj"
    assert all((float(jnp.abs(g["b"]).max()) > 0) == (m != unused) for m, g in grads.params.items())
    assert all(float(jnp.abs(g["a"]).max()) == 0 for g in grads.params.values())
    after = jax.tree.map(np.asarray, nnx.to_pure_dict(state))
    assert jax.tree.all(jax.tree.map(np.array_equal, before, after))  # the base is untouched

    lora = randomized(init_lora(ours, rank=2, targets=[".*"], seed=13), seed=14)  # every Linear
    merged = merge(state, lora, scale=0.7)
    back = jax.tree.map(np.asarray, nnx.to_pure_dict(unmerge(merged, lora, scale=0.7)))
    assert max(float(np.abs(a - b).max()) for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(before))) < 1e-6
    # a scan_layers model stacks each run of blocks: the same adapters update the right rows
    sg, ss = nnx.split(scanned)
    want = module_to_flat(nnx.merge(graphdef, merged))
    got = module_to_flat(nnx.merge(sg, merge(ss, lora, scale=0.7)), get_model_kind("mmdit").stacked(scanned.cfg))
    assert sorted(got) == sorted(want)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-6, atol=1e-7, err_msg=name)


def test_roundtrip_through_a_file(tmp_path):
    diffusers_model("flux", tmp_path / "flux", seed=14)
    ours = unigen.from_pretrained(str(tmp_path / "flux"))
    lora = randomized(init_lora(ours, rank=2, alpha=3.0, targets=["proj_out", "to_q"], seed=15), seed=16)
    save_lora(str(tmp_path / "l.safetensors"), lora)
    back = load_lora(str(tmp_path / "l.safetensors"), ours)
    assert sorted(back.params) == sorted(lora.params) and back.alphas == lora.alphas
    for m in lora.params:
        for k in "ab":
            np.testing.assert_array_equal(np.asarray(back.params[m][k]), np.asarray(lora.params[m][k]))
    with pytest.raises(WeightError, match="sd3 LoRA cannot be applied to a flux"):
        diffusers_model("sd3", tmp_path / "sd3")
        apply_lora(ours, init_lora(unigen.from_pretrained(str(tmp_path / "sd3"))))


# ---------------------------------------------------------------- bad files
def test_bad_files_name_the_problem(tmp_path):
    from safetensors.numpy import save_file
    diffusers_model("sd3", tmp_path / "sd3", seed=17)
    ours = unigen.from_pretrained(str(tmp_path / "sd3"))
    rs = np.random.RandomState(0)
    m = "transformer.transformer_blocks.0.attn.to_q"
    good = {f"{m}.lora_A.weight": rs.randn(4, 16).astype(np.float32),
            f"{m}.lora_B.weight": rs.randn(16, 4).astype(np.float32)}

    def check(sd, match, metadata=None):
        path = str(tmp_path / "bad.safetensors")
        save_file(sd, path, metadata=metadata)
        with pytest.raises(WeightError, match=match):
            load_lora(path, ours)

    check({**good, "transformer.transformer_blocks.9.attn.to_q.lora_A.weight": good[f"{m}.lora_A.weight"],
           "transformer.transformer_blocks.9.attn.to_q.lora_B.weight": good[f"{m}.lora_B.weight"]},
          r"does not have.*transformer_blocks\.9\.attn\.to_q")
    check({**good, "transformer.pos_embed.proj.lora_A.weight": good[f"{m}.lora_A.weight"],
           "transformer.pos_embed.proj.lora_B.weight": good[f"{m}.lora_B.weight"]}, "pos_embed.proj")
    check({**good, f"{m}.lora_B.weight": rs.randn(16, 3).astype(np.float32)}, "rank mismatch")
    check(good, r"rank mismatch.*r=8",
          metadata={"lora_adapter_metadata": json.dumps({"transformer.r": 8, "transformer.lora_alpha": 8})})
    check({**good, f"{m}.lora_A.weight": rs.randn(4, 12).astype(np.float32)}, r"do not fit.*\(16 -> 16\)")
    check({f"{m}.lora_A.weight": good[f"{m}.lora_A.weight"]}, "no lora_B")
    check({**good, "text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_A.weight": good[
        f"{m}.lora_A.weight"]}, "text-encoder")
    check({"lora_unet_single_blocks_0_linear1.lora_down.weight": good[f"{m}.lora_A.weight"]}, "kohya")
    check({**good, f"{m}.weight": rs.randn(16, 16).astype(np.float32)}, r"not LoRA A / B / alpha keys")
    with pytest.raises(WeightError, match="no LoRA file"):
        load_lora(str(tmp_path / "missing.safetensors"), ours)
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(WeightError, match="not a readable safetensors"):
        load_lora(str(tmp_path / "junk.safetensors"), ours)
