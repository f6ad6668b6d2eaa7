"""Sample a trained model: `python infer/sample.py --workdir DIR --per-class K --seed S --out FILE.npz`.

See `unigen/infer/sample.py` for the flags (also installed as the `unigen-sample` command).
"""

from unigen.cpu_malloc import reexec_with_cpu_malloc

if __name__ == "__main__":
    reexec_with_cpu_malloc()  # opt-in (UNIGEN_CPU_MALLOC=1): see unigen/cpu_malloc.py
    from unigen.infer.sample import main

    raise SystemExit(main())
