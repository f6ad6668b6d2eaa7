"""Packaging and layout: one packaging file lists every package; no import cycles between
unigen's sub-packages (imports inside functions counted too)."""

import os
import tomllib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_pyproject_lists_every_package():
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        listed = set(tomllib.load(f)["tool"]["setuptools"]["packages"])
    found = set()
    for top, name in (("unigen", "unigen"), ("kernels", "unigen_kernels")):
        for folder, _, files in os.walk(os.path.join(ROOT, top)):
            if "__init__.py" in files:
                rel = os.path.relpath(folder, os.path.join(ROOT, top))
                found.add(name if rel == "." else f"{name}.{rel.replace(os.sep, '.')}")
    assert listed == found, f"add to pyproject.toml: {sorted(found - listed)}; remove: {sorted(listed - found)}"


def test_distribution_is_unigen_jax_and_imports_as_unigen():
    # The name `unigen` on the package index belongs to an unrelated project.
    import importlib.metadata as md
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)["project"]
    assert project["name"] == "unigen-jax" and {"Homepage", "Source", "Issues"} <= set(project["urls"])
    assert "unigen-jax" in md.packages_distributions().get("unigen", []), "pip install -e . again after a rename"
    urls = md.metadata("unigen-jax").get_all("Project-URL")
    assert any(u.startswith("Source, ") for u in urls), urls


def test_no_import_cycles_between_subpackages():
    import ast
    # unigen/<sub>/... and kernels/ (as unigen_kernels): an edge per import, lazy ones included.
    def unit(module):
        parts = module.split(".")
        if parts[0] == "unigen_kernels" or module.startswith("unigen.kernels"):
            return "kernels"
        return parts[1] if parts[0] == "unigen" and len(parts) > 1 else None

    edges = {}
    for base, pkg in (("unigen", "unigen"), ("kernels", "unigen_kernels")):
        for folder, _, files in os.walk(os.path.join(ROOT, base)):
            for name in files:
                if not name.endswith(".py"):
                    continue
                rel = os.path.relpath(os.path.join(folder, name), os.path.join(ROOT, base))[:-3]
                module = ".".join([pkg, *rel.split(os.sep)]).removesuffix(".__init__")
                src = unit(module) if module != "unigen" else None
                if src is None:
                    continue
                with open(os.path.join(folder, name)) as f:
                    tree = ast.parse(f.read())
                for node in ast.walk(tree):
                    if isinstance(node, ast.Import):
                        targets = [a.name for a in node.names]
                    elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                        targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
                    else:
                        continue
                    for t in targets:
                        dst = unit(t)
                        if dst and dst != src:
                            edges.setdefault(src, set()).add(dst)

    def reaches(a, b, seen=()):
        return any(n == b or (n not in seen and reaches(n, b, seen + (n,))) for n in edges.get(a, ()))

    cycles = sorted({tuple(sorted((a, b))) for a in edges for b in edges[a] if reaches(b, a)})
    assert not cycles, f"import cycles between sub-packages: {cycles} ({ {k: sorted(v) for k, v in edges.items()} })"


def test_pure_jax_tests_need_no_torch():
    # Collected as on a machine without torch/diffusers/transformers: only the parity modules
    # skip whole; every other module imports (its parity tests skip one by one).
    import subprocess
    import sys
    env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "tests"))
    out = subprocess.run([sys.executable, "-m", "pytest", "-p", "block_torch", "--collect-only", "-q", "-rs",
                          "-p", "no:cacheprovider", os.path.join(ROOT, "tests")],
                         capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    skipped = sorted(line.split("]")[1].split(":")[0].strip() for line in out.stdout.splitlines()
                     if line.startswith("SKIPPED"))
    assert skipped == ["tests/test_dit_parity.py", "tests/test_released_networks.py", "tests/test_sana_block.py"], \
        out.stdout[-2000:]
