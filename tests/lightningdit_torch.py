"""A small PyTorch LightningDiT: the oracle for unigen's DiT in LightningDiT mode.

Written for these tests from the reference repo (hustvl/LightningDiT: models/lightningdit.py,
models/rmsnorm.py, models/swiglu_ffn.py, models/pos_embed.py), in our own words and without
timm / einops / torch.compile. Module and parameter names follow the reference's state dict
(`blocks.N.attn.qkv.weight`, `blocks.N.mlp.w12.weight`, `final_layer.norm_final.weight`, ...),
so the weights map onto unigen the way a real LightningDiT checkpoint would.
Tensors are NCHW as in the reference.
"""

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    """LLaMA's RMSNorm (the reference's models/rmsnorm.py): learnable scale, eps 1e-6, float32 stats."""

    def __init__(self, dim, eps=1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        xf = x.float()
        y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return y.type_as(x) * self.weight


def _pairwise_rotate(x):
    """(x0, x1, x2, x3, ...) -> (-x1, x0, -x3, x2, ...): EVA's rotate_half over adjacent pairs."""
    pairs = x.unflatten(-1, (-1, 2))
    return torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)


class GridRope(nn.Module):
    """EVA-02 VisionRotaryEmbeddingFast as LightningDiT builds it: dim = head_dim // 2,
    pt_seq_len = the token grid side, theta 10000, 'lang' frequencies."""

    def __init__(self, dim, pt_seq_len, ft_seq_len=None, theta=10000.0):
        super().__init__()
        ft_seq_len = ft_seq_len or pt_seq_len
        inv = 1.0 / (theta ** (torch.arange(0, dim, 2)[: dim // 2].float() / dim))
        pos = torch.arange(ft_seq_len) / ft_seq_len * pt_seq_len
        f = torch.einsum("n,f->nf", pos, inv).repeat_interleave(2, dim=-1)  # (n, dim), each freq twice
        n = ft_seq_len
        # first `dim` channels follow the first grid axis (rows), the next `dim` the second (columns)
        full = torch.cat([f[:, None, :].expand(n, n, dim), f[None, :, :].expand(n, n, dim)], dim=-1)
        self.register_buffer("freqs_cos", full.cos().reshape(n * n, 2 * dim))
        self.register_buffer("freqs_sin", full.sin().reshape(n * n, 2 * dim))

    def forward(self, x):
        return x * self.freqs_cos + _pairwise_rotate(x) * self.freqs_sin


class Attention(nn.Module):
    def __init__(self, dim, heads, qk_norm=False, use_rmsnorm=False):
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=True)
        norm = (lambda: RMSNorm(self.head_dim)) if use_rmsnorm else (lambda: nn.LayerNorm(self.head_dim))
        self.q_norm = norm() if qk_norm else nn.Identity()
        self.k_norm = norm() if qk_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim)

    def forward(self, x, rope=None):
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q, k = rope(q), rope(k)
        o = F.scaled_dot_product_attention(q, k, v)
        return self.proj(o.transpose(1, 2).reshape(b, n, c))


class SwiGLUFFN(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.w12 = nn.Linear(dim, 2 * hidden)
        self.w3 = nn.Linear(hidden, dim)

    def forward(self, x):
        a, b = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(a) * b)


class Mlp(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


def modulate(x, shift, scale):
    x = x * (1 + scale.unsqueeze(1))
    return x if shift is None else x + shift.unsqueeze(1)


def _norm(dim, use_rmsnorm):
    return RMSNorm(dim) if use_rmsnorm else nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)


class Block(nn.Module):
    def __init__(self, dim, heads, mlp_ratio=4.0, use_qknorm=False, use_swiglu=False, use_rmsnorm=False,
                 wo_shift=False):
        super().__init__()
        self.norm1, self.norm2 = _norm(dim, use_rmsnorm), _norm(dim, use_rmsnorm)
        self.attn = Attention(dim, heads, qk_norm=use_qknorm, use_rmsnorm=use_rmsnorm)
        hidden = int(dim * mlp_ratio)
        self.mlp = SwiGLUFFN(dim, int(2 / 3 * hidden)) if use_swiglu else Mlp(dim, hidden)
        self.wo_shift = wo_shift
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, (4 if wo_shift else 6) * dim))

    def forward(self, x, c, rope=None):
        mods = self.adaLN_modulation(c)
        if self.wo_shift:
            (s1, g1, s2, g2), h1, h2 = mods.chunk(4, dim=1), None, None
        else:
            h1, s1, g1, h2, s2, g2 = mods.chunk(6, dim=1)
        x = x + g1.unsqueeze(1) * self.attn(modulate(self.norm1(x), h1, s1), rope=rope)
        return x + g2.unsqueeze(1) * self.mlp(modulate(self.norm2(x), h2, s2))


def sincos_table(dim, grid):
    """MAE/DiT fixed table: the first half of the channels encodes the column, the second the row."""
    def one_axis(d, pos):
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
        ang = np.outer(pos.reshape(-1), omega)
        return np.concatenate([np.sin(ang), np.cos(ang)], axis=1)
    cols, rows = np.meshgrid(np.arange(grid, dtype=np.float32), np.arange(grid, dtype=np.float32))
    return np.concatenate([one_axis(dim // 2, cols), one_axis(dim // 2, rows)], axis=1).astype(np.float32)


def timestep_features(t, dim=256, max_period=10000):
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
    args = t[:, None].float() * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class LightningDiT(nn.Module):
    def __init__(self, input_size=8, patch_size=1, in_channels=4, hidden_size=64, depth=2, num_heads=4,
                 mlp_ratio=4.0, num_classes=10, learn_sigma=False, use_qknorm=False, use_swiglu=False,
                 use_rope=False, use_rmsnorm=False, wo_shift=False):
        super().__init__()
        self.p, self.learn_sigma = patch_size, learn_sigma
        self.c_out = in_channels * (2 if learn_sigma else 1)
        self.x_embedder = nn.Module()
        self.x_embedder.proj = nn.Conv2d(in_channels, hidden_size, patch_size, patch_size)
        self.t_embedder = nn.Module()
        self.t_embedder.mlp = nn.Sequential(nn.Linear(256, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size))
        self.y_embedder = nn.Module()
        self.y_embedder.embedding_table = nn.Embedding(num_classes + 1, hidden_size)
        grid = input_size // patch_size
        self.pos_embed = nn.Parameter(torch.from_numpy(sincos_table(hidden_size, grid))[None], requires_grad=False)
        self.feat_rope = GridRope(hidden_size // num_heads // 2, pt_seq_len=grid) if use_rope else None
        self.blocks = nn.ModuleList([
            Block(hidden_size, num_heads, mlp_ratio, use_qknorm, use_swiglu, use_rmsnorm, wo_shift)
            for _ in range(depth)])
        self.final_layer = nn.Module()
        self.final_layer.norm_final = _norm(hidden_size, use_rmsnorm)
        self.final_layer.linear = nn.Linear(hidden_size, patch_size * patch_size * self.c_out)
        self.final_layer.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))

    def forward(self, x, t, y):
        x = self.x_embedder.proj(x).flatten(2).transpose(1, 2) + self.pos_embed
        c = self.t_embedder.mlp(timestep_features(t)) + self.y_embedder.embedding_table(y)
        for block in self.blocks:
            x = block(x, c, self.feat_rope)
        shift, scale = self.final_layer.adaLN_modulation(c).chunk(2, dim=1)
        x = self.final_layer.linear(modulate(self.final_layer.norm_final(x), shift, scale))
        n, h = x.shape[0], int(round(x.shape[1] ** 0.5))
        x = x.reshape(n, h, h, self.p, self.p, self.c_out)
        x = torch.einsum("nhwpqc->nchpwq", x).reshape(n, self.c_out, h * self.p, h * self.p)
        return x.chunk(2, dim=1)[0] if self.learn_sigma else x  # the reference drops the sigma half


def randomize(module, seed):
    """Every trainable weight random (adaLN and the final layer included, so all of the network
    is exercised); norm scales around 1."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name == "pos_embed":
                continue
            noise = torch.randn(p.shape, generator=g) * 0.2
            p.copy_(1.0 + noise if "norm" in name and name.endswith(".weight") else noise)
