"""Does vision-foundation alignment make the tokenizer's latents more linearly separable?

    python bench/vavae_alignment.py --foundation runs/lzn_repr --workdir runs/vavae_vs_kl [--quick]

Trains, one after the other in this process, `configs/vavae_digits.py` twice with the same
autoencoder, steps, batch, optimiser and seed: (1) VA-VAE, aligned with the frozen encoder
at `--foundation` (the VF loss with its adaptive weight), and (2) the plain KL autoencoder
(no VF loss, no projection). Each is scored on the test split by its reconstruction PSNR and a
linear probe on its flattened latents (softmax regression, the penalty chosen on held-out
training latents; unigen/eval/probe.py); the raw-pixel probe is the yardstick, and the same probe
on the foundation's own tokens and on their top-C principal components per token (C = the latent
channels) says how much a C-channel latent could gain at most by copying the foundation. The table goes
to `<workdir>/comparison.json` and stdout. Work dirs resume, so a rerun only evaluates.
`--quick` is a smoke run (a tiny autoencoder, a few steps), for the tests.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICK = {"train.steps": 4, "train.batch_size": 16, "train.checkpoint_every": 4, "train.warmup_steps": 1,
         "model.autoencoder.block_out_channels": (8, 16), "model.autoencoder.norm_num_groups": 4}


def configs(foundation: str, quick: bool, seed: int = 0):
    """(aligned, plain) run configs of configs/vavae_digits.py."""
    from unigen.tasks.autoencoder import load_foundation
    from unigen.training.config import apply_override, load_config_file

    width = load_foundation(foundation).cfg.width  # the foundation tokens' width sets vf_dim
    out = []
    for aligned in (True, False):
        cfg = load_config_file(os.path.join(ROOT, "configs", "vavae_digits.py"))
        overrides = {"vavae.foundation": foundation if aligned else "", "model.vf_dim": width if aligned else 0,
                     "seed": seed}
        if quick:
            overrides.update(QUICK)
        for k, v in overrides.items():
            apply_override(cfg, k, v)
        out.append(cfg)
    return out


def foundation_probes(foundation: str, cfg, channels: int) -> dict:
    """The same linear probe on the frozen foundation's own tokens (flattened), and on those tokens
    reduced per token to their top `channels` principal components (fitted on the train split):
    what a latent of that width could hold of the foundation at best if it were a linear copy."""
    import jax

    from unigen.eval.probe import linear_probe
    from unigen.tasks.arrays import split_arrays
    from unigen.tasks.autoencoder import load_foundation
    enc = load_foundation(foundation)
    tokens = jax.jit(enc.tokens)
    (x_tr, y_tr), (x_te, y_te) = split_arrays(cfg, "train"), split_arrays(cfg, "test")
    f_tr, f_te = np.asarray(tokens(x_tr), np.float64), np.asarray(tokens(x_te), np.float64)
    mu = f_tr.reshape(-1, f_tr.shape[-1]).mean(0)
    basis = np.linalg.svd(f_tr.reshape(-1, f_tr.shape[-1]) - mu, full_matrices=False)[2][:channels].T
    top = [((f - mu) @ basis).reshape(len(f), -1).astype(np.float32) for f in (f_tr, f_te)]
    return {"foundation_tokens_probe_test_acc": linear_probe(f_tr.reshape(len(f_tr), -1).astype(np.float32), y_tr,
                                                             f_te.reshape(len(f_te), -1).astype(np.float32),
                                                             y_te)["test_acc"],
            f"foundation_top{channels}_pcs_probe_test_acc": linear_probe(top[0], y_tr, top[1], y_te)["test_acc"]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--foundation", required=True, help="the frozen encoder (e.g. an LZN representation work dir)")
    p.add_argument("--workdir", required=True)
    p.add_argument("--seed", type=int, default=0, help="the seed of both runs (initialisation, batches, noise)")
    p.add_argument("--quick", action="store_true", help="a smoke run: a tiny autoencoder, a few steps")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)

    from unigen.training.loop import train

    rows = {}
    for name, cfg in zip(("vavae", "plain_kl"), configs(args.foundation, args.quick, args.seed)):
        start = time.perf_counter()
        result = train(cfg, os.path.join(args.workdir, name), progress=not args.no_progress)
        ev = result["eval"]
        rows[name] = {"psnr_db": ev["psnr_db"], "probe_test_acc": ev["linear_probe_latents"]["test_acc"],
                      "probe_train_acc": ev["linear_probe_latents"]["train_acc"], "steps": cfg.train.steps,
                      "final_l1": result.get("l1"), "seconds": time.perf_counter() - start}
        rows["raw_pixels_probe_test_acc"] = ev["linear_probe_pixels"]["test_acc"]
    rows["probe_gain_vavae_minus_plain"] = rows["vavae"]["probe_test_acc"] - rows["plain_kl"]["probe_test_acc"]
    channels = cfg.model.autoencoder.latent_channels
    rows.update(foundation_probes(args.foundation, cfg, channels))
    os.makedirs(args.workdir, exist_ok=True)
    with open(os.path.join(args.workdir, "comparison.json"), "w") as f:
        json.dump(rows, f, indent=2)
    print(f"digits tokenizers after {rows['vavae']['steps']} steps (test split):")
    for name in ("vavae", "plain_kl"):
        r = rows[name]
        print(f"  {name:<9} PSNR {r['psnr_db']:.2f} dB   latent linear probe {r['probe_test_acc']:.4f}   "
              f"({r['seconds'] / 60:.1f} min)")
    print(f"  raw pixels: linear probe {rows['raw_pixels_probe_test_acc']:.4f}; "
          f"alignment gain {rows['probe_gain_vavae_minus_plain']:+.4f}")
    print(f"  the foundation's own tokens: {rows['foundation_tokens_probe_test_acc']:.4f}; their top {channels} "
          f"principal components per token (the most a {channels}-channel latent copy could hold): "
          f"{rows[f'foundation_top{channels}_pcs_probe_test_acc']:.4f}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, ROOT)
    raise SystemExit(main())
