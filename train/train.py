"""Train a unigen model: `python train/train.py --config configs/dit_digits.py --workdir DIR`.

See `unigen/training/cli.py` for the flags (the same entry point is the `unigen-train` command).
"""

from unigen.cpu_malloc import reexec_with_cpu_malloc

if __name__ == "__main__":
    reexec_with_cpu_malloc()  # opt-in (UNIGEN_CPU_MALLOC=1): see unigen/cpu_malloc.py
    from unigen.training.cli import main

    raise SystemExit(main())
