"""Package discovery only (metadata lives in pyproject.toml).

The top-level `kernels/` folder installs as `unigen_kernels` (DESIGN.md §8): the
plain name `kernels` belongs to a widely installed package that transformers
probes for, so it must never be importable from here as `kernels`.
"""
from setuptools import find_packages, setup

kernel_packages = ["unigen_kernels" + p[len("kernels"):] for p in find_packages(include=["kernels", "kernels.*"])]
setup(
    packages=find_packages(include=["unigen", "unigen.*"]) + kernel_packages,
    package_dir={"unigen_kernels": "kernels"},
)
