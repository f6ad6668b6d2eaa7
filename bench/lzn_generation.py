"""Does the LZN latent help the decoder? The LZN generation job against plain rectified flow.

    python bench/lzn_generation.py --workdir runs/lzn_vs_rf [--quick]

Trains, one after the other in this process, (1) `configs/lzn_gen_digits.py` (a DiT decoder
conditioned on LZN latents, encoder and decoder trained end to end, samples decoded from
z ~ N(0, I)) and (2) the same DiT decoder as a plain unconditional rectified flow (no
encoder, no latent): same steps, batch, optimiser, sampler and seeds. Both are scored by
the label-free digits protocol (FD against the test split, nearest-train distances); the
table goes to `<workdir>/comparison.json` and stdout. Work dirs resume, so a rerun only
evaluates. `--quick` is a smoke run (tiny models, a few steps), for the tests.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICK = {"train.steps": 4, "train.batch_size": 16, "train.checkpoint_every": 4, "train.sample_every": 0,
         "eval.num_samples": 64, "eval.seeds": 1, "eval.batch_size": 64, "sample.steps": 2}
QUICK_LZN = {"model.encoder.width": 16, "model.encoder.depth": 1, "model.encoder.num_heads": 2,
             "model.decoder.depth": 1, "model.decoder.hidden_size": 32, "model.decoder.num_heads": 2}
QUICK_RF = {"model.depth": 1, "model.hidden_size": 32, "model.num_heads": 2}


def lzn_config():
    from unigen.training.config import load_config_file
    return load_config_file(os.path.join(ROOT, "configs", "lzn_gen_digits.py"))


def plain_rf_config(lzn):
    """configs/dit_digits.py made unconditional, with the LZN job's decoder, schedule and sampler."""
    import ml_collections

    from unigen.training.config import load_config_file
    c = load_config_file(os.path.join(ROOT, "configs", "dit_digits.py"))
    dec = dict(lzn.model.decoder)
    c.data.num_classes = 0  # unconditional: the LZN decoder sees no label either
    for k in ("name", "depth", "hidden_size", "num_heads", "patch_size", "mlp_ratio"):
        c.model[k] = dec[k]
    c.model.class_dropout_prob = 0.0
    c.model.scan_layers, c.model.remat = lzn.model.scan_layers, lzn.model.remat
    c.diffusion = lzn.diffusion
    for part in ("train", "sample", "eval"):
        c[part] = ml_collections.ConfigDict(lzn[part].to_dict())
    c.seed = lzn.seed
    c.train.lr_multipliers = ()  # the per-part rates of the LZN job name its encoder
    return c


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", required=True)
    p.add_argument("--quick", action="store_true", help="a smoke run: tiny models, a few steps")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)

    from unigen.training.config import apply_override
    from unigen.training.loop import train

    lzn = lzn_config()
    rf = plain_rf_config(lzn)
    if args.quick:
        for cfg, model in ((lzn, QUICK_LZN), (rf, QUICK_RF)):
            for k, v in {**QUICK, **model}.items():
                apply_override(cfg, k, v)
    rows = {}
    for name, cfg in (("lzn", lzn), ("plain_rf", rf)):
        start = time.perf_counter()
        result = train(cfg, os.path.join(args.workdir, name), progress=not args.no_progress)
        fd = result["eval"]["samples"]["fd"]
        rows[name] = {"fd_mean": fd["mean"], "fd_std": fd["std"], "steps": cfg.train.steps,
                      "nn_train_l2": result["eval"]["samples"]["nn_dist"]["mean"],
                      "copy_share": result["eval"]["samples"]["copy_share"]["mean"],
                      "seconds": time.perf_counter() - start}
    rows["fd_ratio_lzn_over_rf"] = rows["lzn"]["fd_mean"] / rows["plain_rf"]["fd_mean"]
    os.makedirs(args.workdir, exist_ok=True)
    with open(os.path.join(args.workdir, "comparison.json"), "w") as f:
        json.dump(rows, f, indent=2)
    print(f"FD vs the digits test split after {rows['lzn']['steps']} steps (mean ± std over seeds):")
    for name in ("lzn", "plain_rf"):
        r = rows[name]
        print(f"  {name:<9} {r['fd_mean']:.3f} ± {r['fd_std']:.3f}   ({r['seconds'] / 60:.1f} min incl. evaluation)")
    print(f"  LZN / plain RF: {rows['fd_ratio_lzn_over_rf']:.3f}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, ROOT)
    raise SystemExit(main())
