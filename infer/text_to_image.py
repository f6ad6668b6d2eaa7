"""Text to images with a released pipeline: `python infer/text_to_image.py --pipeline PATH_OR_ID
--prompt "..." --out DIR`.

See `unigen/infer/text_to_image.py` for the flags (also installed as `unigen-text-to-image`).
"""

from unigen.cpu_malloc import reexec_with_cpu_malloc

if __name__ == "__main__":
    reexec_with_cpu_malloc()  # opt-in (UNIGEN_CPU_MALLOC=1): see unigen/cpu_malloc.py
    from unigen.infer.text_to_image import main

    raise SystemExit(main())
