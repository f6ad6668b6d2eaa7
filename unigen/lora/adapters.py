"""Low-rank adapters (LoRA, Hu et al. 2021) on unigen's SD3 (MMDiT) and Flux transformers.

Adapters are named by the *diffusers module path* of the torch Linear they adapt
(`transformer_blocks.0.attn.to_q`, `single_transformer_blocks.3.proj_out`, ...), the names that
diffusers / PEFT LoRA files use, so a file maps onto adapters one to one. Each name is tied to
the unigen kernel (or kernels) that the converters (unigen.convert.mmdit / unigen.convert.flux)
fill from that Linear, and to where in it:

  * q / k / v of one attention are one fused kernel (D, 3, H, Dh) here: the adapter of `to_q`
    updates the slice [:, 0], `to_k` [:, 1], `to_v` [:, 2], each reshaped (D, H, Dh);
  * output projections are (H, Dh, D): the adapter's (D_in, D) update is reshaped to it;
  * Flux's single-block `proj_out` (D + 4D inputs) is two kernels here (`attn_out` from the
    first D input columns, `mlp_out` from the rest): the adapter's A is split the same way,
    since B A[:, cols] is the update of those columns;
  * modulation Linears (D, (k, D)) are reshaped to their chunked kernel.

An adapter holds `a` (in, r) and `b` (r, out) in unigen's x @ W orientation; the update of the
torch weight (out, in) is scale * (a @ b).T with scale = alpha / r, PEFT's `lora_alpha / r`.
`b` starts at zero (PEFT's default), so a fresh adapter leaves the model unchanged.

Merging is functional: `merge(state, lora)` returns new parameters W + scale * a @ b and leaves
`state` alone, so a training step can take gradients with respect to `lora` only, through the
merged model, with the base weights frozen (merging costs one small matmul per target per
step, no change to the model's code). `unmerge` subtracts the same update. Models built with
`scan_layers=True` hold each run of blocks stacked on a leading axis; the adapter of layer i
then updates row i of the stacked kernel.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from unigen.errors import WeightError

# diffusers' attention projections (joint q/k/v, the context stream's add_*_proj, the outputs,
# and SD3.5's image-only attn2), the modules diffusers' SD3 / Flux LoRA training scripts target.
DEFAULT_TARGETS = (r"attn2?\.(to_q|to_k|to_v|to_out\.0|add_q_proj|add_k_proj|add_v_proj|to_add_out)",)


@dataclasses.dataclass(frozen=True)
class Piece:
    """Where a block of the torch Linear's input columns lands in one unigen kernel: the adapter's
    update (a[in_lo:in_hi] @ b) is reshaped to `shape` and added at kernel[index]."""
    param: str                      # unigen flat parameter name (per-layer, as in the converters)
    in_lo: int
    in_hi: int
    index: tuple                    # () for the whole kernel, (slice(None), i) for q/k/v slot i
    shape: tuple

    def __hash__(self):  # slices are unhashable before Python 3.12
        return hash((self.param, self.in_lo, self.in_hi, repr(self.index), self.shape))


@dataclasses.dataclass(frozen=True)
class Target:
    """One adaptable diffusers Linear: its size (torch in / out features) and unigen pieces."""
    module: str
    d_in: int
    d_out: int
    pieces: tuple


def _linear(module: str, param: str, d_in: int, out_shape: tuple) -> Target:
    d_out = math.prod(out_shape)
    return Target(module, d_in, d_out, (Piece(f"{param}.kernel", 0, d_in, (), (d_in, *out_shape)),))


def _qkv(prefix: str, names: Sequence[str], param: str, d: int, h: int, dh: int) -> list[Target]:
    return [Target(f"{prefix}{n}", d, h * dh, (Piece(f"{param}.kernel", 0, d, (slice(None), i), (d, h, dh)),))
            for i, n in enumerate(names)]


def _proj(module: str, param: str, d: int, h: int, dh: int) -> Target:
    """An attention output Linear (D -> D); its unigen kernel splits the input axis (H, Dh, D)."""
    return Target(module, d, d, (Piece(f"{param}.kernel", 0, d, (), (h, dh, d)),))


def _embedders(cfg, d: int, guidance: bool, x_in: int | None) -> list[Target]:
    out = [_linear("context_embedder", "context_embedder", cfg.joint_attention_dim, (d,)),
           _linear("time_text_embed.timestep_embedder.linear_1", "t_embedder.fc1", 256, (d,)),
           _linear("time_text_embed.timestep_embedder.linear_2", "t_embedder.fc2", d, (d,)),
           _linear("time_text_embed.text_embedder.linear_1", "pooled_embedder.fc1", cfg.pooled_projection_dim, (d,)),
           _linear("time_text_embed.text_embedder.linear_2", "pooled_embedder.fc2", d, (d,)),
           _linear("norm_out.linear", "final_ada", d, (2, d))]
    if guidance:
        out += [_linear("time_text_embed.guidance_embedder.linear_1", "guidance_embedder.fc1", 256, (d,)),
                _linear("time_text_embed.guidance_embedder.linear_2", "guidance_embedder.fc2", d, (d,))]
    if x_in is not None:  # Flux's x_embedder is a Linear (SD3's is a conv: no Linear LoRA there)
        out.append(_linear("x_embedder", "x_embedder", x_in, (d,)))
    return out


def _mlp(pre: str, theirs: str, ours: str, d: int) -> list[Target]:
    return [_linear(f"{pre}{theirs}.net.0.proj", f"{ours}.fc1", d, (4 * d,)),
            _linear(f"{pre}{theirs}.net.2", f"{ours}.fc2", 4 * d, (d,))]


def sd3_targets(cfg) -> dict[str, Target]:
    """Every Linear of diffusers' SD3Transformer2DModel, as unigen.convert.mmdit maps it."""
    from unigen.models.mmdit import block_runs
    d, h, dh, p = cfg.hidden_size, cfg.num_attention_heads, cfg.attention_head_dim, cfg.patch_size
    out = _embedders(cfg, d, False, None) + [_linear("proj_out", "proj_out", d, (p * p * cfg.out_channels,))]
    for j, (first, count, dual, pre_only) in enumerate(block_runs(cfg)):
        for r in range(count):
            pre, ub = f"transformer_blocks.{first + r}.", f"blocks_{j}.{r}"
            out.append(_linear(pre + "norm1.linear", f"{ub}.x_ada", d, (9 if dual else 6, d)))
            out.append(_linear(pre + "norm1_context.linear", f"{ub}.ctx_ada", d, (2 if pre_only else 6, d)))
            attns = [("attn.", ("to_q", "to_k", "to_v"), "to_out.0", "x_attn"),
                     ("attn.", ("add_q_proj", "add_k_proj", "add_v_proj"), None if pre_only else "to_add_out",
                      "ctx_attn")]
            if dual:
                attns.append(("attn2.", ("to_q", "to_k", "to_v"), "to_out.0", "x_attn2"))
            for sub, qkv, proj, ours in attns:
                out += _qkv(pre + sub, qkv, f"{ub}.{ours}.qkv", d, h, dh)
                if proj is not None:
                    out.append(_proj(pre + sub + proj, f"{ub}.{ours}.proj", d, h, dh))
            out += _mlp(pre, "ff", f"{ub}.x_mlp", d)
            if not pre_only:
                out += _mlp(pre, "ff_context", f"{ub}.ctx_mlp", d)
    return {t.module: t for t in out}


def flux_targets(cfg) -> dict[str, Target]:
    """Every Linear of diffusers' FluxTransformer2DModel, as unigen.convert.flux maps it."""
    d, h, dh = cfg.hidden_size, cfg.num_attention_heads, cfg.attention_head_dim
    out = _embedders(cfg, d, cfg.guidance_embeds, cfg.in_channels)
    out.append(_linear("proj_out", "proj_out", d, (cfg.out_features,)))

    def proj(module, param):
        return _proj(module, param, d, h, dh)

    for i in range(cfg.num_layers):
        pre, ub = f"transformer_blocks.{i}.", f"double_blocks.{i}"
        out.append(_linear(pre + "norm1.linear", f"{ub}.x_ada", d, (6, d)))
        out.append(_linear(pre + "norm1_context.linear", f"{ub}.ctx_ada", d, (6, d)))
        out += _qkv(pre + "attn.", ("to_q", "to_k", "to_v"), f"{ub}.x_attn.qkv", d, h, dh)
        out += _qkv(pre + "attn.", ("add_q_proj", "add_k_proj", "add_v_proj"), f"{ub}.ctx_attn.qkv", d, h, dh)
        out += [proj(pre + "attn.to_out.0", f"{ub}.x_attn.proj"), proj(pre + "attn.to_add_out", f"{ub}.ctx_attn.proj")]
        out += _mlp(pre, "ff", f"{ub}.x_mlp", d) + _mlp(pre, "ff_context", f"{ub}.ctx_mlp", d)
    hidden = 4 * d
    for i in range(cfg.num_single_layers):
        pre, ub = f"single_transformer_blocks.{i}.", f"single_blocks.{i}"
        out.append(_linear(pre + "norm.linear", f"{ub}.ada", d, (3, d)))
        out += _qkv(pre + "attn.", ("to_q", "to_k", "to_v"), f"{ub}.attn.qkv", d, h, dh)
        out.append(_linear(pre + "proj_mlp", f"{ub}.mlp_in", d, (hidden,)))
        # proj_out reads cat([attention (d), MLP (4d)]); unigen keeps the two column blocks apart
        out.append(Target(pre + "proj_out", d + hidden, d, (
            Piece(f"{ub}.attn_out.kernel", 0, d, (), (h, dh, d)),
            Piece(f"{ub}.mlp_out.kernel", d, d + hidden, (), (hidden, d)))))
    return {t.module: t for t in out}


def model_kind(model) -> str:
    """'sd3' for unigen.models.mmdit.MMDiT, 'flux' for unigen.models.flux.Flux."""
    from unigen.models.flux import Flux
    from unigen.models.mmdit import MMDiT
    if isinstance(model, MMDiT):
        return "sd3"
    if isinstance(model, Flux):
        return "flux"
    raise TypeError(f"LoRA supports unigen's MMDiT (SD3) and Flux transformers, not {type(model).__name__}")


def all_targets(model) -> dict[str, Target]:
    """Every adaptable Linear of `model`, by diffusers module path."""
    return (sd3_targets if model_kind(model) == "sd3" else flux_targets)(model.cfg)


def _matches(pattern: str, module: str) -> bool:
    """PEFT's target_modules rule (the whole name or a dot-separated suffix of it), with regexes."""
    parts = module.split(".")
    return any(re.fullmatch(pattern, ".".join(parts[i:])) for i in range(len(parts)))


def select_targets(model, patterns: Iterable[str] = DEFAULT_TARGETS) -> dict[str, Target]:
    """The targets whose diffusers module path matches one of `patterns` (regexes, each matched
    against the whole path or a dotted suffix of it, e.g. 'to_q', r'attn\\.to_(q|k|v)',
    r'transformer_blocks\\.0\\..*'). A pattern that matches nothing is an error."""
    patterns = (patterns,) if isinstance(patterns, str) else tuple(patterns)
    targets = all_targets(model)
    chosen = {}
    for p in patterns:
        hit = {m: t for m, t in targets.items() if _matches(p, m)}
        if not hit:
            raise ValueError(f"LoRA target pattern {p!r} matches no Linear of this {model_kind(model)} model; "
                             f"module names are diffusers', e.g. {sorted(targets)[:4]}")
        chosen.update(hit)
    return {m: targets[m] for m in sorted(chosen)}


@jax.tree_util.register_pytree_node_class
class Lora:
    """A set of adapters: `params[module] = {"a": (in, r), "b": (r, out)}` (the trainable pytree
    leaves) and, static, the model kind, each module's `Target` and its `alpha`."""

    def __init__(self, kind: str, targets: dict[str, Target], alphas: dict[str, float], params: dict):
        self.kind, self.targets, self.alphas, self.params = kind, dict(targets), dict(alphas), dict(params)

    def tree_flatten(self):
        names = tuple(sorted(self.params))
        aux = (self.kind, names, tuple(self.targets[m] for m in names), tuple(float(self.alphas[m]) for m in names))
        return tuple(self.params[m] for m in names), aux

    @classmethod
    def tree_unflatten(cls, aux, leaves):
        kind, names, targets, alphas = aux
        return cls(kind, dict(zip(names, targets)), dict(zip(names, alphas)), dict(zip(names, leaves)))

    def rank(self, module: str) -> int:
        return int(self.params[module]["a"].shape[1])

    def scale(self, module: str) -> float:
        return self.alphas[module] / self.rank(module)

    def replace(self, params: dict) -> "Lora":
        return Lora(self.kind, self.targets, self.alphas, params)

    def __repr__(self):
        ranks = sorted({self.rank(m) for m in self.params})
        return f"Lora({self.kind}, {len(self.params)} modules, rank {ranks})"


def init_lora(model, rank: int = 4, alpha: float | None = None, targets: Iterable[str] = DEFAULT_TARGETS,
              *, seed: int = 0) -> Lora:
    """Fresh adapters for the Linears of `model` matching `targets` (see `select_targets`).
    `a` is uniform in +-1/sqrt(in) (what PEFT's kaiming_uniform(a=sqrt(5)) gives lora_A), `b` zero,
    so the merged model starts equal to the base. `alpha` defaults to `rank` (scale 1)."""
    if not isinstance(rank, int) or isinstance(rank, bool) or rank <= 0:
        raise ValueError(f"LoRA rank={rank!r}: must be a positive int")
    alpha = float(rank if alpha is None else alpha)
    chosen = select_targets(model, targets)
    key = jax.random.key(seed)
    params = {}
    for i, (m, t) in enumerate(chosen.items()):
        bound = 1.0 / math.sqrt(t.d_in)
        a = jax.random.uniform(jax.random.fold_in(key, i), (t.d_in, rank), jnp.float32, -bound, bound)
        params[m] = {"a": a, "b": jnp.zeros((rank, t.d_out), jnp.float32)}
    return Lora(model_kind(model), chosen, {m: alpha for m in chosen}, params)


def _resolve(name: str, flat: dict) -> tuple[tuple, int | None]:
    """The state path of unigen flat parameter `name`, and the layer row when the model stacks
    that run of blocks (scan_layers: `blocks_0.2.x.kernel` is row 2 of `blocks_0.x.kernel`)."""
    if name in flat:
        return flat[name], None
    parts = name.split(".")
    for cut in range(1, len(parts)):
        if parts[cut].isdigit():
            stacked = ".".join(parts[:cut] + parts[cut + 1:])
            if stacked in flat:
                return flat[stacked], int(parts[cut])
    raise WeightError(f"LoRA: the model has no parameter {name!r} (was the adapter made for another model?)")


def _check_shapes(lora: Lora, module: str):
    t, p = lora.targets[module], lora.params[module]
    a, b = p["a"], p["b"]
    if a.ndim != 2 or b.ndim != 2 or a.shape[0] != t.d_in or b.shape[1] != t.d_out or a.shape[1] != b.shape[0]:
        raise WeightError(f"LoRA {module!r}: a {tuple(a.shape)} / b {tuple(b.shape)} do not fit the Linear "
                          f"({t.d_in} -> {t.d_out}): need a (in, r) = ({t.d_in}, r), b (r, out) = (r, {t.d_out})")


def merge(state: nnx.State, lora: Lora, scale: float = 1.0) -> nnx.State:
    """New parameters W + scale * (alpha / r) * a @ b for every adapter; `state` (nnx.split's or
    nnx.state's) is not modified. Differentiable in `lora` (and `scale`)."""
    entries = list(nnx.to_flat_state(state))
    by_name = {".".join(str(k) for k in path): path for path, _ in entries}
    values = {path: var.get_value() for path, var in entries}
    for module in sorted(lora.params):
        _check_shapes(lora, module)
        a, b = lora.params[module]["a"], lora.params[module]["b"]
        factor = scale * lora.scale(module)
        for piece in lora.targets[module].pieces:
            path, row = _resolve(piece.param, by_name)
            kernel = values[path]
            update = (a[piece.in_lo:piece.in_hi] @ b).reshape(piece.shape)
            index = piece.index if row is None else (row, *piece.index)
            values[path] = kernel.at[index].add((factor * update).astype(kernel.dtype))
    return nnx.from_flat_state([(path, var.replace(value=values[path])) for path, var in entries])


def unmerge(state: nnx.State, lora: Lora, scale: float = 1.0) -> nnx.State:
    """The inverse of `merge(state, lora, scale)` (up to rounding)."""
    return merge(state, lora, -scale)


def apply_lora(model: nnx.Module, lora: Lora, scale: float = 1.0) -> nnx.Module:
    """Merge `lora` into `model`'s parameters in place (inference); returns the model."""
    _check_kind(model, lora)
    nnx.update(model, merge(nnx.state(model, nnx.Param), lora, scale))
    return model


def remove_lora(model: nnx.Module, lora: Lora, scale: float = 1.0) -> nnx.Module:
    """Undo `apply_lora(model, lora, scale)` in place; returns the model."""
    return apply_lora(model, lora, -scale)


def _check_kind(model, lora: Lora):
    if model_kind(model) != lora.kind:
        raise WeightError(f"a {lora.kind} LoRA cannot be applied to a {model_kind(model)} model")


def lora_to_numpy(lora: Lora) -> dict[str, dict[str, np.ndarray]]:
    return {m: {k: np.asarray(v) for k, v in p.items()} for m, p in lora.params.items()}
