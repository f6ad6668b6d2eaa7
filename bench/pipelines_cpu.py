"""unigen's SD3 and Flux pipelines vs diffusers' on CPU: one text-to-image call, end to end.

    python bench/pipelines_cpu.py               # default run (~2.5 min on 2 cores)
    python bench/pipelines_cpu.py --quick       # smoke run (2 steps, 1 round)
    python bench/pipelines_cpu.py --threads 1   # torch on one thread (on a busy 2-core machine, much
                                                # faster for these tiny networks: bench/RESULTS.md)
    python bench/pipelines_cpu.py --size 128 --steps 28 --json out.json

What runs: the tiny random pipeline folders of the parity tests, written by diffusers'
`save_pretrained` (random weights, so the images are noise; what is timed is the work):
  sd3           tests/test_sd3_pipeline.py's folder (2 CLIPs with projection, T5, an SD3.5-style
                MM-DiT with qk RMS norm and one dual-attention block, a 16-channel VAE, shift 3.0),
                called with guidance_scale 7 (classifier-free guidance: a doubled batch);
  flux-dev      tests/test_flux_pipeline.py's `build_pipeline(dev=True)` (guidance embedding,
                dynamic shifting), guidance_scale 3.5;
  flux-schnell  the same with dev=False (no guidance input, shift 1).
Every call: one prompt, --size x --size pixels, --steps Euler steps, --msl T5 tokens,
output_type="np" (prompt encoding, the loop, the VAE decode and the conversion all inside the
timed call). Both sides start from the *same* initial latents (numpy noise, NCHW for diffusers'
SD3, packed for diffusers' Flux, NHWC for unigen), and the bench checks the two images agree
(max abs difference) before timing anything.

Timing: diffusers in one worker process (torch eager, torch.set_num_threads(--threads), its
`__call__` under no_grad as diffusers does), unigen in another (XLA:CPU sizes its own pool to the
cores). "first call" is the first call after loading (unigen: tracing + XLA compilation of the
text encoders and of the loop + decode, then one run; diffusers: its first run). Then the parent
alternates rounds between the workers (ABBA, a pause between, so neither's thread pool spins
while the other measures); each round makes --calls calls; the figure is the median of all.
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
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))
TESTS = os.path.join(os.path.dirname(HERE), "tests")
PROMPT = "an astronaut riding a horse on the moon, digital art"
PIPELINES = ("sd3", "flux-dev", "flux-schnell")
GUIDANCE = {"sd3": 7.0, "flux-dev": 3.5, "flux-schnell": 0.0}


def initial_noise(size: int, seed: int = 0):
    """The NCHW (1, 16, h, w) float32 initial latents both sides start from (both VAEs: factor 2)."""
    import numpy as np
    return np.random.RandomState(seed).randn(1, 16, size // 2, size // 2).astype(np.float32)


# ============================================================================ building the folders
def build_sd3(root: str, seed: int = 0):
    """tests/test_sd3_pipeline.py's fixture pipeline (with T5), saved to root/sd3; (pipe, folder).
    Its sample_size is 8 and pos_embed_max_size 16: images up to 64 px (VAE factor 2, patch 2)."""
    import pathlib

    import diffusers
    import torch
    import transformers
    from test_sd3_pipeline import _clip_tokenizer_folders, _perturb_norms, _randomize, _t5_tokenizer_folder

    tok_root = pathlib.Path(root) / "sd3_tokenizers"
    tok_root.mkdir()
    clip_dirs, vocab = _clip_tokenizer_folders(tok_root)
    t5_dir, t5_vocab = _t5_tokenizer_folder(tok_root)
    torch.manual_seed(seed)
    eot = vocab["<|endoftext|>"]
    clip_l = transformers.CLIPTextModelWithProjection(transformers.CLIPTextConfig(
        vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
        max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=16, eos_token_id=2, bos_token_id=0,
        pad_token_id=1))
    clip_g = transformers.CLIPTextModelWithProjection(transformers.CLIPTextConfig(
        vocab_size=len(vocab), hidden_size=40, intermediate_size=80, num_hidden_layers=3, num_attention_heads=5,
        max_position_embeddings=77, hidden_act="gelu", projection_dim=24, eos_token_id=eot,
        bos_token_id=vocab["<|startoftext|>"], pad_token_id=0))
    t5 = transformers.T5EncoderModel(transformers.T5Config(
        vocab_size=t5_vocab, d_model=96, d_kv=8, d_ff=64, num_layers=2, num_heads=4, feed_forward_proj="gated-gelu",
        relative_attention_num_buckets=8, relative_attention_max_distance=16, dropout_rate=0.0))
    for i, m in enumerate((clip_l, clip_g, t5)):
        _perturb_norms(m, i)
    transformer = diffusers.SD3Transformer2DModel(
        sample_size=8, patch_size=2, in_channels=16, out_channels=16, num_layers=2, attention_head_dim=8,
        num_attention_heads=2, joint_attention_dim=96, caption_projection_dim=16, pooled_projection_dim=40,
        pos_embed_max_size=16, qk_norm="rms_norm", dual_attention_layers=(0,))
    _randomize(transformer, 3, 0.05)
    vae = diffusers.AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(16, 32), layers_per_block=1, latent_channels=16, norm_num_groups=8, sample_size=16,
        scaling_factor=1.5305, shift_factor=0.0609, use_quant_conv=False, use_post_quant_conv=False)
    _perturb_norms(vae, 4)
    for m in (clip_l, clip_g, t5, transformer, vae):
        m.eval()
    pipe = diffusers.StableDiffusion3Pipeline(
        transformer=transformer, vae=vae, scheduler=diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0),
        text_encoder=clip_l, text_encoder_2=clip_g, text_encoder_3=t5,
        tokenizer=transformers.CLIPTokenizer.from_pretrained(clip_dirs["tokenizer"]),
        tokenizer_2=transformers.CLIPTokenizer.from_pretrained(clip_dirs["tokenizer_2"]),
        tokenizer_3=transformers.T5TokenizerFast.from_pretrained(t5_dir))
    pipe.set_progress_bar_config(disable=True)
    folder = os.path.join(root, "sd3")
    pipe.save_pretrained(folder)
    return pipe, folder


def build_all(root: str):
    """{name: (diffusers pipe, folder)} for PIPELINES."""
    import pathlib

    from test_flux_pipeline import build_pipeline
    from test_sd3_pipeline import _clip_tokenizer_folders, _t5_tokenizer_folder

    flux_root = pathlib.Path(root) / "flux_tokenizers"
    flux_root.mkdir()
    clip_dirs, clip_vocab = _clip_tokenizer_folders(flux_root)
    t5_dir, t5_vocab = _t5_tokenizer_folder(flux_root)
    toks = (clip_dirs["tokenizer"], clip_vocab, t5_dir, t5_vocab)
    return {"sd3": build_sd3(root),
            "flux-dev": build_pipeline(root, toks, dev=True, seed=0),
            "flux-schnell": build_pipeline(root, toks, dev=False, seed=1)}


# ============================================================================ workers
class Worker:
    """What both sides do with their `call(name) -> (seconds, images)`: the first call (its images
    saved for the equality check) and the timed calls."""

    def first(self, name, out):
        import numpy as np
        seconds, images = self.call(name)
        np.save(out, images)
        return seconds

    def time(self, name, calls):
        return [self.call(name)[0] for _ in range(calls)]


class TorchWorker(Worker):
    """Builds the folders (the parent hands their paths to the jax worker) and calls diffusers."""

    def setup(self, root, threads, size, steps, msl):
        import diffusers
        import torch
        torch.set_num_threads(threads)
        self.torch, self.diffusers = torch, diffusers
        self.call_kw = dict(height=size, width=size, num_inference_steps=steps, max_sequence_length=msl,
                            output_type="np")
        self.size = size
        t0 = time.perf_counter()
        self.pipes = build_all(root)
        return {"folders": {k: v[1] for k, v in self.pipes.items()}, "build_s": time.perf_counter() - t0,
                "torch": torch.__version__, "diffusers": diffusers.__version__, "threads": torch.get_num_threads()}

    def _latents(self, name):
        torch = self.torch
        x = torch.from_numpy(initial_noise(self.size))
        if name.startswith("flux"):
            _, c, h, w = x.shape
            x = self.diffusers.FluxPipeline._pack_latents(x, 1, c, h, w)
        return x

    def call(self, name):
        pipe = self.pipes[name][0]
        kw = dict(self.call_kw)
        if GUIDANCE[name]:
            kw["guidance_scale"] = GUIDANCE[name]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the tiny T5 vocabulary cuts the prompt to --msl tokens
            t0 = time.perf_counter()
            images = pipe(PROMPT, latents=self._latents(name), **kw).images
            return time.perf_counter() - t0, images


class JaxWorker(Worker):
    """Loads the folders with unigen.pipelines.from_pretrained and calls them."""

    def setup(self, folders, size, steps, msl):
        import jax
        import unigen.pipelines
        self.call_kw = dict(height=size, width=size, num_inference_steps=steps, max_sequence_length=msl,
                            output_type="np")
        self.size = size
        self.pipes, load_s = {}, {}
        for name, folder in folders.items():
            t0 = time.perf_counter()
            self.pipes[name] = unigen.pipelines.from_pretrained(folder)
            load_s[name] = time.perf_counter() - t0
        return {"jax": jax.__version__, "load_s": load_s, "devices": str(jax.devices()),
                "classes": {k: type(v).__name__ for k, v in self.pipes.items()}}

    def call(self, name):
        import numpy as np
        pipe = self.pipes[name]
        kw = dict(self.call_kw)
        if GUIDANCE[name]:
            kw["guidance_scale"] = GUIDANCE[name]
        latents = initial_noise(self.size).transpose(0, 2, 3, 1)  # NHWC; the Flux pipeline packs it
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t0 = time.perf_counter()
            images = np.asarray(pipe(PROMPT, latents=latents, **kw))  # already numpy: the wait is inside
            return time.perf_counter() - t0, images


def worker_main(kind: str) -> None:
    sys.path.insert(0, TESTS)  # the parity tests' builders and tokenizers
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
    def __init__(self, kind):
        self.kind = kind
        self.p = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--worker", kind],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)

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


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=64, help="image side in pixels (the SD3 folder allows <= 64)")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--msl", type=int, default=64, help="max_sequence_length (T5 tokens)")
    ap.add_argument("--rounds", type=int, default=4, help="alternating rounds (ABBA)")
    ap.add_argument("--calls", type=int, default=3, help="timed calls per round")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--pipelines", default=",".join(PIPELINES))
    ap.add_argument("--quick", action="store_true", help="2 steps, 1 round of 1 call: a smoke run")
    ap.add_argument("--json", help="also write the figures to this JSON file")
    ap.add_argument("--worker", choices=["torch", "jax"], help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return worker_main(args.worker)
    if args.quick:
        args.steps, args.rounds, args.calls = 2, 1, 1
    names = [n for n in args.pipelines.split(",") if n]
    unknown = sorted(set(names) - set(PIPELINES))
    if unknown:
        raise SystemExit(f"--pipelines: unknown {unknown}; choose from {list(PIPELINES)}")

    import numpy as np
    t_start = time.perf_counter()
    print(f"# text-to-image pipelines on CPU: unigen (jax) vs diffusers (torch), {args.size}x{args.size} px, "
          f"{args.steps} steps, max_sequence_length {args.msl}, {args.threads} torch threads, "
          f"{args.rounds} round(s) x {args.calls} call(s)")
    print(f"# load average at start: {os.getloadavg()}", flush=True)
    root = tempfile.mkdtemp(prefix="pipelines_cpu_")
    torch_w, jax_w = Proc("torch"), Proc("jax")
    res = {"args": vars(args)}
    try:
        info_t = torch_w("setup", root=root, threads=args.threads, size=args.size, steps=args.steps, msl=args.msl)
        folders = {k: v for k, v in info_t["folders"].items() if k in names}
        info_j = jax_w("setup", folders=folders, size=args.size, steps=args.steps, msl=args.msl)
        res.update(torch_info=info_t, jax_info=info_j)
        print(f"torch {info_t['torch']} / diffusers {info_t['diffusers']} ({info_t['threads']} threads); "
              f"jax {info_j['jax']} on {info_j['devices']}; folders built in {info_t['build_s']:.1f} s")
        print("unigen.pipelines.from_pretrained: " + ", ".join(
            f"{k} -> {info_j['classes'][k]} ({info_j['load_s'][k]:.1f} s)" for k in names), flush=True)

        first, diff = {}, {}
        for name in names:
            outs = {}
            for w in (torch_w, jax_w):
                out = os.path.join(root, f"{name}_{w.kind}.npy")
                first.setdefault(name, {})[w.kind] = w("first", name=name, out=out)
                outs[w.kind] = np.load(out)
            if outs["torch"].shape != outs["jax"].shape:
                raise SystemExit(f"{name}: image shapes differ {outs['torch'].shape} vs {outs['jax'].shape}")
            diff[name] = float(np.abs(outs["torch"] - outs["jax"]).max())
            print(f"{name}: first call diffusers {first[name]['torch']:.2f} s, unigen {first[name]['jax']:.2f} s "
                  f"(compile + run); images {outs['jax'].shape}, max |unigen - diffusers| {diff[name]:.1e}",
                  flush=True)
            if diff[name] > 1e-3:
                raise SystemExit(f"{name}: the two pipelines' images differ by {diff[name]:.2e}; refusing to "
                                 f"compare their speed")
        res.update(first_call_s=first, max_abs_diff=diff)

        times = {name: {"torch": [], "jax": []} for name in names}
        for r in range(args.rounds):
            order = (torch_w, jax_w) if r % 2 == 0 else (jax_w, torch_w)
            for w in order:
                for name in names:
                    time.sleep(0.2)  # let the other side's pool go idle
                    times[name][w.kind] += w("time", name=name, calls=args.calls)
        res["seconds"] = times
    finally:
        torch_w.close()
        jax_w.close()

    print(f"\n{'pipeline':13s} {'diffusers s':>11s} {'unigen s':>9s} {'speed-up':>9s}   "
          f"{'first call: diffusers':>21s} {'unigen':>7s}")
    res["median_s"] = {}
    for name in names:
        med = {k: statistics.median(v) for k, v in times[name].items()}
        res["median_s"][name] = med
        print(f"{name:13s} {med['torch']:11.3f} {med['jax']:9.3f} {med['torch'] / med['jax']:8.2f}x   "
              f"{first[name]['torch']:21.2f} {first[name]['jax']:7.2f}")
    print("speed-up = diffusers median / unigen median (> 1: unigen faster); first call in seconds "
          "(unigen's includes jit compilation)")
    print(f"# load average at end: {os.getloadavg()}; total wall {time.perf_counter() - t_start:.0f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)
    return res


if __name__ == "__main__":
    main()
