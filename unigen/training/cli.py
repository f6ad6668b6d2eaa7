"""`python train/train.py --config CONFIG.py --workdir DIR [--config.KEY=VALUE ...]`

Trains (or, on an existing work dir, resumes) the run the config describes. Multi-process
runs start jax.distributed from --coordinator_address/--num_processes/--process_id, or from
the environment (JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID; SLURM needs none).
"""

from __future__ import annotations

import argparse
import sys


def main(argv=None) -> int:
    from unigen.training.config import apply_override, load_config_file, parse_overrides

    argv = list(sys.argv[1:] if argv is None else argv)
    overrides, rest = parse_overrides(argv)
    parser = argparse.ArgumentParser(prog="train/train.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="a Python config file defining get_config()")
    parser.add_argument("--workdir", required=True, help="where checkpoints, metrics and samples go")
    parser.add_argument("--coordinator_address", default=None, help="host:port of process 0 (multi-process)")
    parser.add_argument("--num_processes", type=int, default=None)
    parser.add_argument("--process_id", type=int, default=None)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (logs only)")
    args = parser.parse_args(rest)

    from unigen import parallel
    from unigen.training.build import ConfigError

    try:
        cfg = load_config_file(args.config)
        for key, value in overrides:
            apply_override(cfg, key, value)
        if args.coordinator_address or args.num_processes:
            parallel.initialize(args.coordinator_address, args.num_processes, args.process_id)
        from unigen.training.loop import train
        result = train(cfg, args.workdir, progress=not args.no_progress)
    except (ConfigError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"done: step {result['step']}, loss {result.get('loss', float('nan')):.4f}; outputs in {args.workdir}")
    return 0


def console_main() -> int:
    """The installed command (see unigen/cpu_malloc.py)."""
    from unigen.cpu_malloc import console_entry

    return console_entry(main)


if __name__ == "__main__":
    raise SystemExit(console_main())
