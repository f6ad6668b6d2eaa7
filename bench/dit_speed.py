"""unigen DiT vs diffusers `DiTTransformer2DModel` on CPU: forward, train step, sampling.

    python bench/dit_speed.py                 # default run (~6 min on 2 cores)
    python bench/dit_speed.py --quick         # smoke run (tiny shapes, seconds)
    python bench/dit_speed.py --xl-loop       # also compile DiT-XL/2 without scan (~100 s)
    python bench/dit_speed.py --ablate-attention  # both sides without the attention
                                              # products (see _ablated_attention)

What runs (DiT-S/2 on 32x32x4 latents, diffusers' layout: per-block timestep/label
embedders; unigen loads the *same* weights from the diffusers folder the torch side saves,
and the bench checks the two forwards agree before timing anything):

  matmul peak  n x n float32 matmul in torch and in jax; the larger is the "peak" for MFU.
  forward      images/s of one forward (torch eager under inference_mode vs one jax.jit).
               torch.compile's forward is printed as a second anchor.
  train step   images/s of one AdamW step on the plain epsilon-MSE loss (t ~ U{0..999},
               x_t = sqrt(abar) x0 + sqrt(1 - abar) eps, label dropout 0.1). unigen: one
               pure jitted function (nnx.split once, nnx.merge inside, optax.adamw, params
               and optimizer state donated). torch: model.train(), AdamW.
  sampling     one 50-step DDIM (eta = 0) loop, no guidance, batch --sample-batch (4). unigen: `unigen.diffusion.
               samplers.ddim` (one jit, lax.scan over steps); torch: a Python loop.
  XL compile   wall time to trace + lower + compile a DiT-XL/2 train step (batch 2,
               abstract parameters, no memory) with scan_layers=True; with --xl-loop also
               with a Python loop over the 28 blocks.

Fairness: the torch side and the jax side run in two worker processes (so neither's thread
pool spins while the other measures). The parent alternates measurement rounds between
them (ABBA order), and reports medians over rounds. Each round starts with one untimed call
(`--iters 2`, the default): the first jax train step after the torch worker has run took up to
twice the steady-state time on a quiet machine (15.1 s against 8.7 s), and training is a long
run of steps. torch.set_num_threads(#cores); XLA:CPU
sizes its own pool to #cores. Both sides use float32.

FLOPs (for MFU) are counted analytically, 2 per multiply-add, matmuls only (see `dit_flops`);
a train step counts 3x the forward (backward = 2x forward).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))

# DiT-S/2 (Peebles & Xie 2023, Table 1) on 32x32x4 latents (256x256 images).
S2 = dict(depth=12, hidden=384, heads=6, patch=2, size=32, channels=4, classes=1000)


def dit_flops(depth, hidden, heads, patch, size, channels, per_block_cond=True, learn_sigma=True,
              attention=True, **_):
    """Forward FLOPs per image (2 per multiply-add; matmuls only, elementwise ops ignored).

    tokens T = (size/patch)^2, D = hidden. Per block: qkv 2*T*D*3D, out proj 2*T*D*D,
    MLP 2*T*D*4D*2, attention QK^T and PV 2 * 2*T*T*D, adaLN Linear 2*D*6D; with per-block
    conditioning (diffusers' layout) also the timestep MLP 2*(256*D + D*D). Outside the
    blocks: patch embedding 2*T*(p*p*C)*D, final adaLN 2*D*2D and Linear 2*T*D*(p*p*C_out).
    attention=False leaves out QK^T and PV (--ablate-attention).
    """
    t = (size // patch) ** 2
    d = hidden
    c_out = channels * (2 if learn_sigma else 1)
    block = 2 * t * d * 3 * d + 2 * t * d * d + 2 * 2 * t * d * 4 * d + 2 * d * 6 * d
    if attention:
        block += 2 * 2 * t * t * d
    if per_block_cond:
        block += 2 * (256 * d + d * d)
    outside = 2 * t * patch * patch * channels * d + 2 * d * 2 * d + 2 * t * d * patch * patch * c_out
    if not per_block_cond:
        outside += 2 * (256 * d + d * d)
    return depth * block + outside


def ddim_alphas(steps: int, num_timesteps: int = 1000):
    """DiT's linear beta schedule and the DDIM-paper stride ('ddim50'): kept timesteps and
    their cumulative alphas, in sampling order (the torch loop uses these; unigen's sampler
    computes the same from `GaussianDiffusion.create(timestep_respacing='ddim<steps>')`)."""
    import numpy as np
    betas = np.linspace(1e-4, 0.02, num_timesteps, dtype=np.float64)
    abar = np.cumprod(1.0 - betas)
    kept = list(range(0, num_timesteps, num_timesteps // steps))[:steps]
    ab = abar[kept]
    ab_prev = np.append(1.0, ab[:-1])
    return kept[::-1], ab[::-1], ab_prev[::-1], abar


# ============================================================================ workers
class TorchWorker:
    def setup(self, batch, sample_batch, threads, seed, folder, quick, ablate_attention=False):
        import numpy as np
        import torch
        import diffusers
        torch.set_num_threads(threads)
        torch.manual_seed(seed)
        self.torch = torch
        cfg = QUICK if quick else S2
        self.cfg = cfg
        self.model = diffusers.DiTTransformer2DModel(
            num_attention_heads=cfg["heads"], attention_head_dim=cfg["hidden"] // cfg["heads"],
            in_channels=cfg["channels"], out_channels=2 * cfg["channels"], num_layers=cfg["depth"],
            patch_size=cfg["patch"], sample_size=cfg["size"], num_embeds_ada_norm=cfg["classes"],
            norm_type="ada_norm_zero", activation_fn="gelu-approximate", attention_bias=True)
        # adaLN-Zero starts at zero (every block the identity); random weights everywhere so
        # the parity check below compares a non-trivial function.
        with torch.no_grad():
            for p in self.model.parameters():
                p.copy_(torch.randn(p.shape) * 0.02)
        if ablate_attention:
            _ablate_torch_attention(self.model)
        self.model.save_pretrained(folder)
        rs = np.random.RandomState(seed)
        c, s = cfg["channels"], cfg["size"]
        self.x = torch.from_numpy(rs.randn(batch, c, s, s).astype(np.float32))
        self.t = torch.from_numpy(rs.randint(0, 1000, batch))
        self.y = torch.from_numpy(rs.randint(0, cfg["classes"], batch))
        self.model.eval()
        with torch.inference_mode():
            out = self.model(self.x, timestep=self.t, class_labels=self.y).sample
        np.savez(os.path.join(folder, "bench_io.npz"), x=self.x.permute(0, 2, 3, 1).numpy(),
                 t=self.t.numpy(), y=self.y.numpy(), out=out.permute(0, 2, 3, 1).numpy())
        self.sample_batch = sample_batch
        self.abar = torch.from_numpy(ddim_alphas(50)[3]).float()
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-4, weight_decay=0.0)
        self.compiled = None
        return dict(params=sum(p.numel() for p in self.model.parameters()), threads=torch.get_num_threads(),
                    version=torch.__version__, diffusers=diffusers.__version__)

    def matmul(self, n, reps):
        torch = self.torch
        a, b = torch.randn(n, n), torch.randn(n, n)
        a @ b
        best = float("inf")
        for _ in range(reps):
            t0 = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - t0)
        return 2 * n ** 3 / best / 1e9

    def forward(self, iters):
        self.model.eval()
        with self.torch.inference_mode():
            return _time(lambda: self.model(self.x, timestep=self.t, class_labels=self.y).sample, iters)

    def compile_forward(self):
        torch = self.torch
        self.model.eval()
        self.compiled = torch.compile(self.model)
        t0 = time.perf_counter()
        with torch.inference_mode():
            self.compiled(self.x, timestep=self.t, class_labels=self.y)
        return time.perf_counter() - t0

    def forward_compiled(self, iters):
        with self.torch.inference_mode():
            return _time(lambda: self.compiled(self.x, timestep=self.t, class_labels=self.y).sample, iters)

    def _train_step(self):
        torch = self.torch
        b, c = self.x.shape[0], self.cfg["channels"]
        t = torch.randint(0, 1000, (b,))
        noise = torch.randn_like(self.x)
        ab = self.abar[t].view(b, 1, 1, 1)
        x_t = ab.sqrt() * self.x + (1 - ab).sqrt() * noise
        out = self.model(x_t, timestep=t, class_labels=self.y).sample  # label dropout: train mode
        loss = torch.nn.functional.mse_loss(out[:, :c], noise)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return loss

    def train(self, iters):
        self.model.train()
        return _time(self._train_step, iters)

    def sample(self, steps):
        torch = self.torch
        kept, ab, ab_prev, _ = ddim_alphas(steps)
        b, c, s = self.sample_batch, self.cfg["channels"], self.cfg["size"]
        y = self.y[:b] if b <= self.y.shape[0] else torch.randint(0, self.cfg["classes"], (b,))
        self.model.eval()

        def loop():
            x = torch.randn(b, c, s, s)
            with torch.inference_mode():
                for i, t in enumerate(kept):  # DDIM eta = 0 (Song et al. 2021, eq. 12)
                    eps = self.model(x, timestep=torch.full((b,), t), class_labels=y).sample[:, :c]
                    x0 = (x - (1 - ab[i]) ** 0.5 * eps) / ab[i] ** 0.5
                    x = ab_prev[i] ** 0.5 * x0 + (1 - ab_prev[i]) ** 0.5 * eps
            return x
        return _time(loop, 1)


QUICK = dict(depth=2, hidden=64, heads=2, patch=2, size=8, channels=4, classes=10)


class JaxWorker:
    def setup(self, batch, sample_batch, threads, seed, folder, quick, scan_layers, attention,
              ablate_attention=False):
        import jax
        import jax.numpy as jnp
        import numpy as np
        import optax
        from flax import nnx
        import unigen
        from unigen.diffusion.gaussian import GaussianDiffusion
        from unigen.diffusion.samplers import ddim
        from unigen.nn import cpu_custom_vjps
        self.jax, self.jnp = jax, jnp
        if ablate_attention:
            from unigen.nn.attention import register_backend
            register_backend("ablated", _ablated_attention)
            attention = "ablated"
        cfg = QUICK if quick else S2
        self.cfg = cfg
        model = unigen.from_pretrained(folder, scan_layers=scan_layers, attention_backend=attention)
        io = np.load(os.path.join(folder, "bench_io.npz"))
        self.x, self.t, self.y = (jnp.asarray(io[k]) for k in ("x", "t", "y"))
        graphdef, params = nnx.split(model)
        self.graphdef = graphdef

        def apply(params, x, t, y, drop_key=None):
            return nnx.merge(graphdef, params)(x, t, y, label_drop_key=drop_key)

        timings = {}
        fwd = jax.jit(apply)
        t0 = time.perf_counter()
        out = np.asarray(fwd(params, self.x, self.t, self.y))
        timings["compile_forward_s"] = time.perf_counter() - t0
        ref = io["out"]
        parity = float(np.abs(out - ref).max() / np.abs(ref).max())

        abar = jnp.asarray(ddim_alphas(50)[3], jnp.float32)
        c = cfg["channels"]
        tx = optax.adamw(1e-4, weight_decay=0.0)

        def loss_fn(params, x0, t, noise, y, drop_key):
            ab = abar[t][:, None, None, None]
            x_t = jnp.sqrt(ab) * x0 + jnp.sqrt(1 - ab) * noise
            out = apply(params, x_t, t, y, drop_key)
            return jnp.mean(jnp.square(out[..., :c] - noise))

        def train_step(params, opt_state, x0, y, key):
            k_t, k_n, k_d = jax.random.split(key, 3)
            t = jax.random.randint(k_t, (x0.shape[0],), 0, 1000)
            noise = jax.random.normal(k_n, x0.shape, x0.dtype)
            with cpu_custom_vjps():  # as unigen's trainer traces its step (a no-op off CPU)
                loss, grads = jax.value_and_grad(loss_fn)(params, x0, t, noise, y, k_d)
            updates, opt_state = tx.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state, loss

        self.train_step_fn = train_step
        self.tx = tx
        self.step = jax.jit(train_step, donate_argnums=(0, 1))
        self.params = params
        self.train_params = jax.tree.map(jnp.copy, params)
        self.opt_state = tx.init(self.train_params)
        self.key = jax.random.key(seed)
        t0 = time.perf_counter()
        self.train_params, self.opt_state, loss = self.step(self.train_params, self.opt_state, self.x, self.y, self.key)
        jax.block_until_ready(loss)
        timings["compile_train_s"] = time.perf_counter() - t0

        self.fwd = fwd
        self.diffusion = GaussianDiffusion.create(timestep_respacing="ddim50")
        self.model_fn = lambda x, t, params, y: apply(params, x, t, y)
        self.ddim = ddim
        self.sample_batch = sample_batch
        self.sample_y = self.y[:sample_batch] if sample_batch <= self.y.shape[0] else jnp.zeros((sample_batch,), jnp.int32)
        self.sample_shape = (sample_batch, cfg["size"], cfg["size"], c)
        return dict(params=int(sum(a.size for a in jax.tree.leaves(params))), parity_max_rel_err=parity,
                    jax=jax.__version__, xla_flags=os.environ.get("XLA_FLAGS", ""), **timings)

    def matmul(self, n, reps):
        jax, jnp = self.jax, self.jnp
        a = jax.random.normal(jax.random.key(0), (n, n))
        b = jax.random.normal(jax.random.key(1), (n, n))
        f = jax.jit(jnp.matmul)
        f(a, b).block_until_ready()
        best = float("inf")
        for _ in range(reps):
            t0 = time.perf_counter()
            f(a, b).block_until_ready()
            best = min(best, time.perf_counter() - t0)
        return 2 * n ** 3 / best / 1e9

    def forward(self, iters):
        return _time(lambda: self.fwd(self.params, self.x, self.t, self.y).block_until_ready(), iters)

    def train(self, iters):
        def one():
            self.key, k = self.jax.random.split(self.key)
            self.train_params, self.opt_state, loss = self.step(self.train_params, self.opt_state, self.x, self.y, k)
            loss.block_until_ready()
        return _time(one, iters)

    def sample(self, steps):
        if steps != 50:
            from unigen.diffusion.gaussian import GaussianDiffusion
            self.diffusion = GaussianDiffusion.create(timestep_respacing=f"ddim{steps}")
        cond = dict(params=self.params, y=self.sample_y)
        run = lambda: self.ddim(self.diffusion, self.model_fn, self.sample_shape, self.jax.random.key(0),
                                cond=cond).block_until_ready()
        if not getattr(self, "_sample_compiled", False):
            t0 = time.perf_counter()
            run()
            self._sample_compile_s = time.perf_counter() - t0
            self._sample_compiled = True
        return _time(run, 1)

    def sample_compile_s(self):
        return self._sample_compile_s

    def xl_compile(self, scan_layers, batch):
        """Seconds to trace + lower + compile a DiT-XL/2 train step (abstract params)."""
        import jax
        import jax.numpy as jnp
        import optax
        from flax import nnx
        from unigen.models.dit import DiT, dit_config
        from unigen.nn import cpu_custom_vjps
        cfg = dit_config("DiT-XL/2", input_size=32, scan_layers=scan_layers)
        abstract = nnx.eval_shape(lambda: DiT(cfg, rngs=nnx.Rngs(0)))
        graphdef, params = nnx.split(abstract)
        tx = optax.adamw(1e-4, weight_decay=0.0)
        opt_state = jax.eval_shape(tx.init, params)
        abar = jnp.linspace(0.99, 0.01, 1000)

        def train_step(params, opt_state, x0, y, key):
            k_t, k_n, k_d = jax.random.split(key, 3)
            t = jax.random.randint(k_t, (x0.shape[0],), 0, 1000)
            noise = jax.random.normal(k_n, x0.shape, x0.dtype)

            def loss_fn(params):
                ab = abar[t][:, None, None, None]
                out = nnx.merge(graphdef, params)(jnp.sqrt(ab) * x0 + jnp.sqrt(1 - ab) * noise, t, y,
                                                  label_drop_key=k_d)
                return jnp.mean(jnp.square(out[..., :4] - noise))
            with cpu_custom_vjps():
                loss, grads = jax.value_and_grad(loss_fn)(params)
            updates, opt_state = tx.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state, loss

        x0 = jax.ShapeDtypeStruct((batch, 32, 32, 4), jnp.float32)
        y = jax.ShapeDtypeStruct((batch,), jnp.int32)
        key = jax.eval_shape(lambda: jax.random.key(0))
        t0 = time.perf_counter()
        jax.jit(train_step, donate_argnums=(0, 1)).lower(params, opt_state, x0, y, key).compile()
        return time.perf_counter() - t0


# ============================================================================ ablation
# --ablate-attention: both sides replace softmax(QK^T/sqrt(d))V by (V + 0 (Q + K)) I, with I the
# (Dh, Dh) identity applied per head as a matmul. The q/k/v projections and their gradients
# still run, the attention products do not; the two models stay equal (the parity check still
# runs), so the step times say what the rest of the network costs on each side: the most any
# attention kernel could buy. The identity product (2 T Dh^2 FLOPs per head, 1.4% of the block)
# keeps the out-projection's input a materialised matmul output as with real attention:
# without it XLA fused the elementwise V + 0 (Q + K) into the transposed copy that the
# out-projection's weight gradient reads, a slow strided loop (0.7 s per step) that real
# attention does not have. XLA keeps 0 * x (it is NaN for x = inf).
def _ablated_attention(q, k, v, *, scale, **_):
    import jax.numpy as jnp
    return jnp.einsum("bthd,de->bthe", v + 0.0 * (q + k), jnp.eye(v.shape[-1], dtype=v.dtype))


def _ablate_torch_attention(model):
    import torch
    from diffusers.models.attention_processor import Attention

    class Ablated:
        def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, **_):
            q, k, v = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
            b, t, _ = v.shape
            heads = (v + 0.0 * (q + k)).view(b, t, attn.heads, -1)
            eye = torch.eye(heads.shape[-1], dtype=v.dtype)
            return attn.to_out[1](attn.to_out[0]((heads @ eye).reshape(b, t, -1)))

    for module in model.modules():
        if isinstance(module, Attention):
            module.set_processor(Ablated())


def _time(fn, iters):
    """Median seconds per call over `iters` calls (after the round's first, untimed call
    when iters > 1: it absorbs allocator / cache effects of switching processes)."""
    if iters > 1:
        fn()
    ts = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def worker_main(kind: str) -> None:
    proto = os.fdopen(os.dup(1), "w", buffering=1)  # replies; library prints go to stderr
    os.dup2(2, 1)
    worker = TorchWorker() if kind == "torch" else JaxWorker()
    for line in sys.stdin:
        msg = json.loads(line)
        if msg["cmd"] == "exit":
            break
        try:
            result = getattr(worker, msg["cmd"])(**msg.get("kw", {}))
            proto.write(json.dumps({"ok": True, "result": result}) + "\n")
        except Exception:  # report to the parent, keep serving
            proto.write(json.dumps({"ok": False, "error": traceback.format_exc()}) + "\n")


# ============================================================================ parent
class Proc:
    def __init__(self, kind, env=None):
        self.kind = kind
        self.p = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--worker", kind],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1,
                                  env={**os.environ, **(env or {})})

    def __call__(self, cmd, **kw):
        self.p.stdin.write(json.dumps({"cmd": cmd, "kw": kw}) + "\n")
        reply = json.loads(self.p.stdout.readline() or '{"ok": false, "error": "worker died"}')
        if not reply["ok"]:
            raise RuntimeError(f"{self.kind} worker, {cmd}: {reply['error']}")
        return reply["result"]

    def close(self):
        try:
            self.p.stdin.write('{"cmd": "exit"}\n')
            self.p.stdin.flush()
            self.p.wait(timeout=30)
        except Exception:
            self.p.kill()


def alternate(procs, cmd, rounds, pause=0.2, **kw):
    """Run `cmd` on every worker, alternating (ABBA...) for `rounds`; lists of results."""
    out = {p.kind: [] for p in procs}
    for r in range(rounds):
        order = procs if r % 2 == 0 else procs[::-1]
        for p in order:
            time.sleep(pause)  # let the other side's pool go idle
            out[p.kind].append(p(cmd, **kw))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds for forward/train")
    ap.add_argument("--iters", type=int, default=2,
                    help="timed calls per round (median), after one untimed call per round")
    ap.add_argument("--sample-batch", type=int, default=4)
    ap.add_argument("--sample-steps", type=int, default=50)
    ap.add_argument("--sample-rounds", type=int, default=1)
    ap.add_argument("--matmul-n", type=int, default=2048)
    ap.add_argument("--scan", action="store_true",
                    help="unigen DiT-S/2 with scan_layers=True (default: a Python loop over the 12 blocks, "
                         "~15%% faster train step on XLA:CPU; see RESULTS.md)")
    ap.add_argument("--attention", default="auto", help="unigen attention backend (auto, einsum, xla)")
    ap.add_argument("--ablate-attention", action="store_true",
                    help="both sides replace attention by (V + 0 (Q + K)) I: "
                         "what the rest of the network costs")
    ap.add_argument("--no-torch-compile", action="store_true")
    ap.add_argument("--no-xl", action="store_true", help="skip the DiT-XL/2 compile-time measurement")
    ap.add_argument("--xl-loop", action="store_true", help="also compile DiT-XL/2 without scan (~100 s)")
    ap.add_argument("--xl-batch", type=int, default=2)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--malloc", choices=["default", "unigen", "hugepages"], default="default",
                    help="glibc malloc settings for BOTH workers: the defaults, unigen's "
                         "(unigen/cpu_malloc.py, what its train/infer commands use on a CPU), or "
                         "transparent huge pages (GLIBC_TUNABLES=glibc.malloc.hugetlb=1)")
    ap.add_argument("--quick", action="store_true", help="tiny model and shapes: a smoke test")
    ap.add_argument("--json", help="also write the figures to this JSON file")
    ap.add_argument("--worker", choices=["torch", "jax"], help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return worker_main(args.worker)
    if args.quick:
        args.batch, args.rounds, args.sample_batch, args.sample_steps = 4, 2, 2, 5
        args.sample_rounds, args.matmul_n, args.no_torch_compile, args.no_xl = 1, 256, True, True

    t_start = time.perf_counter()
    cfg = QUICK if args.quick else S2
    flops_img = dit_flops(**cfg, attention=not args.ablate_attention)
    print(f"# DiT-S/2 speed: unigen (jax) vs diffusers (torch), CPU, {args.threads} threads each, "
          f"malloc={args.malloc}, {args.iters} timed call(s) per round"
          + (" after an untimed one" if args.iters > 1 else ""))
    print(f"# load average at start: {os.getloadavg()}")
    folder = tempfile.mkdtemp(prefix="dit_speed_")
    from unigen.cpu_malloc import tuned_environ
    env = {"default": {}, "hugepages": {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"},
           "unigen": {"GLIBC_TUNABLES": tuned_environ({})["GLIBC_TUNABLES"]}}[args.malloc]
    torch_w, jax_w = Proc("torch", env), Proc("jax", env)
    res = {"args": vars(args), "flops_per_image_forward": flops_img}
    try:
        info_t = torch_w("setup", batch=args.batch, sample_batch=args.sample_batch, threads=args.threads,
                         seed=0, folder=folder, quick=args.quick, ablate_attention=args.ablate_attention)
        info_j = jax_w("setup", batch=args.batch, sample_batch=args.sample_batch, threads=args.threads,
                       seed=0, folder=folder, quick=args.quick, scan_layers=args.scan,
                       attention=args.attention, ablate_attention=args.ablate_attention)
        res.update(torch_info=info_t, jax_info=info_j)
        print(f"torch {info_t['version']} / diffusers {info_t['diffusers']}: {info_t['params']:,} params, "
              f"{info_t['threads']} threads")
        attention = ("ABLATED ((V + 0 (Q + K)) I) on both sides" if args.ablate_attention
                     else repr(args.attention))
        print(f"jax {info_j['jax']}: {info_j['params']:,} params, scan_layers={args.scan}, "
              f"attention={attention}, "
              f"XLA_FLAGS={info_j['xla_flags']!r}")
        print(f"same weights, forward max rel err {info_j['parity_max_rel_err']:.2e}; jax compile: "
              f"forward {info_j['compile_forward_s']:.1f} s, train step {info_j['compile_train_s']:.1f} s")
        if info_t["params"] != info_j["params"] or info_j["parity_max_rel_err"] > 1e-4:
            raise SystemExit("the two models differ; refusing to compare their speed")

        procs = [torch_w, jax_w]
        mm = alternate(procs, "matmul", 3, n=args.matmul_n, reps=5)
        peak = {k: statistics.median(v) for k, v in mm.items()}
        peak_used = max(peak.values())
        print(f"\nmatmul peak ({args.matmul_n}^3 f32, median of rounds): torch {peak['torch']:.1f} GFLOP/s, "
              f"jax {peak['jax']:.1f} GFLOP/s -> MFU uses {peak_used:.1f}")
        print(f"model FLOPs: forward {flops_img / 1e9:.2f} GFLOP/image, train step {3 * flops_img / 1e9:.2f}",
              flush=True)

        rows = []

        def report(name, times, batch, flops_mult, anchor="torch"):
            med = {k: statistics.median(v) for k, v in times.items()}
            ips = {k: batch / v for k, v in med.items()}
            res[name] = {"seconds": times, "median_s": med, "images_per_s": ips}
            for k in med:
                mfu = ips[k] * flops_mult * flops_img / 1e9 / peak_used
                res[name].setdefault("mfu", {})[k] = mfu
                rows.append((name, k, med[k], ips[k], mfu))
            if anchor in ips and "jax" in ips:
                res[name]["ratio_jax_over_" + anchor] = ips["jax"] / ips[anchor]
            print(f"{name}: " + ", ".join(f"{k} {med[k]:.3f} s ({ips[k]:.2f} img/s)" for k in med)
                  + (f" -> unigen/{anchor} {ips['jax'] / ips[anchor]:.2f}x" if anchor in ips else ""), flush=True)

        fw = alternate(procs, "forward", args.rounds, iters=args.iters)
        report("forward", fw, args.batch, 1)
        tr = alternate(procs, "train", args.rounds, iters=args.iters)
        report("train_step", tr, args.batch, 3)
        sm = alternate(procs, "sample", args.sample_rounds, steps=args.sample_steps)
        report("sampling", sm, args.sample_batch, args.sample_steps)
        res["jax_info"]["compile_sample_s"] = jax_w("sample_compile_s")
        if not args.no_torch_compile:
            res["torch_compile_s"] = torch_w("compile_forward")
            fc = {"torch_compile": [], "jax": []}
            for r in range(args.rounds):
                for who in (["torch_compile", "jax"] if r % 2 == 0 else ["jax", "torch_compile"]):
                    time.sleep(0.2)
                    fc[who].append(torch_w("forward_compiled", iters=args.iters) if who == "torch_compile"
                                   else jax_w("forward", iters=args.iters))
            report("forward_vs_torch_compile", fc, args.batch, 1, anchor="torch_compile")
    finally:
        torch_w.close()
        jax_w.close()

    print(f"\n{'measurement':26s} {'side':14s} {'median s':>9s} {'images/s':>9s} {'MFU':>6s}")
    for name, who, med, ips, mfu in rows:
        print(f"{name:26s} {who:14s} {med:9.3f} {ips:9.2f} {100 * mfu:5.1f}%")
    print()
    for name in ("forward", "train_step", "sampling"):
        print(f"ratio unigen/diffusers {name:11s}: {res[name]['ratio_jax_over_torch']:.2f}x")
    if "forward_vs_torch_compile" in res:
        print(f"ratio unigen/torch.compile forward: {res['forward_vs_torch_compile']['ratio_jax_over_torch_compile']:.2f}x"
              f" (torch.compile first call {res['torch_compile_s']:.1f} s)")
    print(f"jax compile (S/2): forward {res['jax_info']['compile_forward_s']:.1f} s, train step "
          f"{res['jax_info']['compile_train_s']:.1f} s (first call, incl. one step); {args.sample_steps}-step sampler "
          f"first call (compile + one run) {res['jax_info']['compile_sample_s']:.1f} s")

    if not args.no_xl:
        for scan in ([True, False] if args.xl_loop else [True]):
            w = Proc("jax")  # a fresh process: nothing cached from the runs above
            try:
                secs = w("xl_compile", scan_layers=scan, batch=args.xl_batch)
            finally:
                w.close()
            res[f"xl_compile_s_scan_{scan}"] = secs
            print(f"DiT-XL/2 train step (batch {args.xl_batch}) trace+lower+compile, scan_layers={scan}: {secs:.1f} s")
    print(f"# load average at end: {os.getloadavg()}; total wall {time.perf_counter() - t_start:.0f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)
    return res


if __name__ == "__main__":
    main()
