"""The step-time hiccup at a checkpoint save, synchronous vs asynchronous orbax saving.

    python bench/checkpoint_hiccup.py [--steps 120] [--every 20] [--hidden 384] [--depth 6]

Trains the digits DiT (a wider one than the main job, so the state is ~100s of MB) twice in
this process, with `train.async_checkpointing` False then True, logging every step. The step
after a save pays for it (the save runs between two logged steps), so the hiccup is the median
time of those steps minus the median of the others. Prints both and writes nothing else.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(async_saving: bool, args) -> dict:
    from unigen.training.config import apply_override, load_config_file
    from unigen.training.loop import train

    cfg = load_config_file(os.path.join(ROOT, "configs", "dit_digits.py"))
    for key, value in [("train.steps", args.steps), ("train.checkpoint_every", args.every), ("train.log_every", 1),
                       ("train.sample_every", 0), ("eval.at_end", False), ("model.hidden_size", args.hidden),
                       ("model.depth", args.depth), ("model.num_heads", 6), ("train.keep_checkpoints", 2),
                       ("train.async_checkpointing", async_saving)]:
        apply_override(cfg, key, value)
    with tempfile.TemporaryDirectory() as workdir:
        train(cfg, workdir, progress=False)
        with open(os.path.join(workdir, "metrics.jsonl")) as f:
            rows = [json.loads(line) for line in f]
        size = sum(os.path.getsize(os.path.join(d, n)) for d, _, fs in os.walk(os.path.join(workdir, "checkpoints"))
                   for n in fs) / 2
    seconds = {r["step"]: 1.0 / r["steps_per_s"] for r in rows if r["step"] > args.every}  # past compile
    after_save = [t for s, t in seconds.items() if s % args.every == 1]
    others = [t for s, t in seconds.items() if s % args.every != 1]
    return dict(step_s=statistics.median(others), after_save_s=statistics.median(after_save),
                hiccup_s=statistics.median(after_save) - statistics.median(others), checkpoint_mb=size / 2 ** 20)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=120)
    p.add_argument("--every", type=int, default=20)
    p.add_argument("--hidden", type=int, default=384)
    p.add_argument("--depth", type=int, default=6)
    args = p.parse_args()
    results = {mode: run(mode == "async", args) for mode in ("sync", "async")}
    for mode, r in results.items():
        print(f"{mode:5s}  step {r['step_s'] * 1e3:7.1f} ms   step after a save {r['after_save_s'] * 1e3:7.1f} ms   "
              f"hiccup {r['hiccup_s'] * 1e3:7.1f} ms   (checkpoint {r['checkpoint_mb']:.0f} MiB)")
    print(f"async / sync hiccup: {results['async']['hiccup_s'] / max(results['sync']['hiccup_s'], 1e-9):.2f}")


if __name__ == "__main__":
    main()
