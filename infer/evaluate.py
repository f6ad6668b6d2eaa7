"""Evaluate digit samples: `python infer/evaluate.py --samples FILE.npz [--json OUT.json]`.

See `unigen/infer/evaluate.py` for the flags (also installed as the `unigen-evaluate` command).
"""

from unigen.cpu_malloc import reexec_with_cpu_malloc

if __name__ == "__main__":
    reexec_with_cpu_malloc()  # opt-in (UNIGEN_CPU_MALLOC=1): see unigen/cpu_malloc.py
    from unigen.infer.evaluate import main

    raise SystemExit(main())
