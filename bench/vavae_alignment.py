"""Does vision-foundation alignment make the tokenizer's latents more linearly separable?

    python bench/vavae_alignment.py --foundation runs/lzn_repr --workdir runs/vavae_vs_kl [--quick]

Trains, one after the other in this process, `configs/vavae_digits.py` twice with the same
autoencoder, steps, batch, optimiser and seed: (1) VA-VAE, aligned with the frozen encoder
at `--foundation` (the VF loss with its adaptive weight), and (2) the plain KL autoencoder
(no VF loss, no projection). Each is scored on the test split by its reconstruction PSNR and a
linear probe on its flattened latents (softmax regression, the penalty chosen on held-out
training latents; unigen/eval/probe.py); the raw-pixel probe is the yardstick. The table goes
to `<workdir>/comparison.json` and stdout. Work dirs resume, so a rerun only evaluates.
`--quick` is a smoke run (a tiny autoencoder, a few steps), for the tests.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

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
    return 0


if __name__ == "__main__":
    sys.path.insert(0, ROOT)
    raise SystemExit(main())
