"""DiT parity: same random weights in, same numbers out (docs/design.md §5).

* diffusers `DiTTransformer2DModel` saved as a folder -> `unigen.from_pretrained` (diffusers mode).
* A small PyTorch re-implementation of the *official* DiT (facebookresearch/DiT models.py,
  written here from the paper and repo, timm-free) -> its state dict saved in the official
  layouts (.pt raw, .pt train checkpoint, .safetensors) -> `from_pretrained` (official mode).
"""

import math

import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

import unigen  # noqa: E402
from unigen.convert.weights import WeightError  # noqa: E402

RTOL = 1e-4


def max_rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / (np.abs(b).max() + 1e-12))


# ---------------------------------------------------------------- official DiT, in torch
def ref_timestep_features(t, dim=256, max_period=10000):
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
    args = t[:, None].float() * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def ref_pos_embed(dim, grid):
    def one_d(d, pos):
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
        out = np.outer(pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)
    gw, gh = np.meshgrid(np.arange(grid, dtype=np.float32), np.arange(grid, dtype=np.float32))
    return np.concatenate([one_d(dim // 2, gw), one_d(dim // 2, gh)], axis=1).astype(np.float32)


class RefAttention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = (q @ k.transpose(-2, -1) * (c // self.heads) ** -0.5).softmax(-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))


class RefMlp(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(nn.functional.gelu(self.fc1(x), approximate="tanh"))


def ref_modulate(x, shift, scale):
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class RefBlock(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = RefAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = RefMlp(dim, 4 * dim)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))

    def forward(self, x, c):
        sm, cm, gm, sf, cf, gf = self.adaLN_modulation(c).chunk(6, dim=1)
        x = x + gm.unsqueeze(1) * self.attn(ref_modulate(self.norm1(x), sm, cm))
        return x + gf.unsqueeze(1) * self.mlp(ref_modulate(self.norm2(x), sf, cf))


class RefDiT(nn.Module):
    """Official DiT forward, NCHW like the original."""

    def __init__(self, input_size, patch, in_ch, dim, depth, heads, num_classes, learn_sigma=True):
        super().__init__()
        self.p, self.c_out = patch, in_ch * (2 if learn_sigma else 1)
        self.x_embedder = nn.Module()
        self.x_embedder.proj = nn.Conv2d(in_ch, dim, patch, patch)
        self.t_embedder = nn.Module()
        self.t_embedder.mlp = nn.Sequential(nn.Linear(256, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.y_embedder = nn.Module()
        self.y_embedder.embedding_table = nn.Embedding(num_classes + 1, dim)
        grid = input_size // patch
        self.pos_embed = nn.Parameter(torch.from_numpy(ref_pos_embed(dim, grid))[None], requires_grad=False)
        self.blocks = nn.ModuleList([RefBlock(dim, heads) for _ in range(depth)])
        self.final_layer = nn.Module()
        self.final_layer.norm_final = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.final_layer.linear = nn.Linear(dim, patch * patch * self.c_out)
        self.final_layer.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))

    def forward(self, x, t, y):
        x = self.x_embedder.proj(x).flatten(2).transpose(1, 2) + self.pos_embed
        c = self.t_embedder.mlp(ref_timestep_features(t)) + self.y_embedder.embedding_table(y)
        for block in self.blocks:
            x = block(x, c)
        shift, scale = self.final_layer.adaLN_modulation(c).chunk(2, dim=1)
        x = self.final_layer.linear(ref_modulate(self.final_layer.norm_final(x), shift, scale))
        n, h = x.shape[0], int(x.shape[1] ** 0.5)
        x = x.reshape(n, h, h, self.p, self.p, self.c_out)
        x = torch.einsum("nhwpqc->nchpwq", x)
        return x.reshape(n, self.c_out, h * self.p, h * self.p)


def randomize(module, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name != "pos_embed":
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)


def official_state_dict(seed=0, **kw):
    kw = {"input_size": 8, "patch": 2, "in_ch": 4, "dim": 32, "depth": 2, "heads": 4, "num_classes": 10, **kw}
    model = RefDiT(**kw)
    randomize(model, seed)
    model.eval()
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return model, sd


def inputs(batch=3, size=8, ch=4, seed=0):
    rs = np.random.RandomState(seed)
    x = rs.randn(batch, size, size, ch).astype(np.float32)
    t = np.array([0, 417, 999][:batch], np.int64)
    y = np.array([1, 7, 10][:batch], np.int64)  # 10 = the null class
    return x, t, y


def run_ref(model, x, t, y):
    with torch.no_grad():
        out = model(torch.from_numpy(x).permute(0, 3, 1, 2), torch.from_numpy(t), torch.from_numpy(y))
    return out.permute(0, 2, 3, 1).numpy()


@pytest.mark.parametrize("layout", ["raw_pt", "train_pt", "safetensors"])
@pytest.mark.parametrize("scan", [False, True])
def test_official_dit_parity(tmp_path, layout, scan):
    model, sd = official_state_dict(seed=1)
    if layout == "raw_pt":
        path = tmp_path / "DiT-tiny.pt"
        torch.save(sd, path)
    elif layout == "train_pt":
        path = tmp_path / "0001000.pt"
        junk = {k: torch.zeros_like(v) for k, v in sd.items()}
        # As the official train.py writes it: the argparse.Namespace of its flags under "args".
        import argparse
        args = argparse.Namespace(model="DiT-XL/2", image_size=256, num_classes=1000, global_batch_size=256)
        torch.save({"model": junk, "ema": sd, "opt": {}, "args": args}, path)  # EMA must win
    else:
        from safetensors.torch import save_file
        path = tmp_path / "dit.safetensors"
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    ours = unigen.from_pretrained(str(path), scan_layers=scan, num_heads=4)
    assert ours.cfg.time_freq_shift == 0.0 and ours.cfg.mlp_norm_eps == 1e-6
    x, t, y = inputs()
    got = np.asarray(ours(jnp.asarray(x), jnp.asarray(t), jnp.asarray(y)))
    assert got.shape == (3, 8, 8, 8)
    assert max_rel_err(got, run_ref(model, x, t, y)) <= RTOL


def test_official_cfg_guides_first_three_channels(tmp_path):
    model, sd = official_state_dict(seed=2)
    torch.save(sd, tmp_path / "m.pt")
    ours = unigen.from_pretrained(str(tmp_path / "m.pt"), num_heads=4)
    x, _, _ = inputs(batch=2)
    x = np.concatenate([x, x])
    t = np.array([500, 500, 500, 500])
    y = np.array([3, 5, 10, 10])
    scale = 4.0
    got = np.asarray(ours.forward_with_cfg(jnp.asarray(x), jnp.asarray(t), jnp.asarray(y), scale, guided_channels=3))
    ref = run_ref(model, x, t, y)  # the official forward_with_cfg, spelled out
    cond, uncond = ref[:2, ..., :3], ref[2:, ..., :3]
    mixed = uncond + scale * (cond - uncond)
    expected = np.concatenate([np.concatenate([mixed, mixed]), ref[..., 3:]], axis=-1)
    assert max_rel_err(got, expected) <= RTOL


def diffusers_folder(tmp_path, seed=0, **overrides):
    diffusers = pytest.importorskip("diffusers")
    config = dict(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8,
                  num_layers=2, patch_size=2, sample_size=8, num_embeds_ada_norm=10,
                  norm_type="ada_norm_zero", activation_fn="gelu-approximate", attention_bias=True)
    config.update(overrides)
    model = diffusers.DiTTransformer2DModel(**config)
    randomize(model, seed)
    model.eval()
    model.save_pretrained(str(tmp_path / "dit"))
    return model, tmp_path / "dit"


@pytest.mark.parametrize("scan", [False, True])
def test_diffusers_dit_parity(tmp_path, scan):
    model, folder = diffusers_folder(tmp_path, seed=3)
    ours = unigen.from_pretrained(str(folder), scan_layers=scan)
    assert ours.cfg.per_block_conditioning and ours.cfg.time_freq_shift == 1.0
    x, t, y = inputs()
    got = np.asarray(ours(jnp.asarray(x), jnp.asarray(t), jnp.asarray(y)))
    with torch.no_grad():
        ref = model(torch.from_numpy(x).permute(0, 3, 1, 2), timestep=torch.from_numpy(t),
                    class_labels=torch.from_numpy(y)).sample.permute(0, 2, 3, 1).numpy()
    assert max_rel_err(got, ref) <= RTOL


def test_convert_cli_roundtrip(tmp_path):
    from unigen.convert.__main__ import main

    model, sd = official_state_dict(seed=4)
    torch.save(sd, tmp_path / "m.pt")
    main([str(tmp_path / "m.pt"), str(tmp_path / "converted"), "--num-heads", "4"])
    ours = unigen.from_pretrained(str(tmp_path / "converted"), scan_layers=True)
    x, t, y = inputs()
    got = np.asarray(ours(jnp.asarray(x), jnp.asarray(t), jnp.asarray(y)))
    assert max_rel_err(got, run_ref(model, x, t, y)) <= RTOL


# ---------------------------------------------------------------- bad input
def test_wrong_shape_weight_names_key_and_shapes(tmp_path):
    _, sd = official_state_dict()
    sd["blocks.1.mlp.fc1.weight"] = torch.zeros(100, 32)
    torch.save(sd, tmp_path / "bad.pt")
    with pytest.raises(WeightError, match=r"blocks\.1\.mlp\.fc1\.weight.*\(100, 32\).*\(128, 32\)"):
        unigen.from_pretrained(str(tmp_path / "bad.pt"), num_heads=4)


def test_unknown_and_missing_keys(tmp_path):
    _, sd = official_state_dict()
    extra = dict(sd, **{"blocks.0.attn.q_norm.weight": torch.zeros(8)})
    torch.save(extra, tmp_path / "extra.pt")
    with pytest.raises(WeightError, match="unknown keys.*q_norm"):
        unigen.from_pretrained(str(tmp_path / "extra.pt"), num_heads=4)
    del sd["blocks.0.attn.proj.bias"]
    torch.save(sd, tmp_path / "missing.pt")
    with pytest.raises(WeightError, match=r"missing key 'blocks\.0\.attn\.proj\.bias'"):
        unigen.from_pretrained(str(tmp_path / "missing.pt"), num_heads=4)

