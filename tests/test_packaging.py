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


def _package_modules():
    """(module name, file path, AST) of every module under unigen/ and kernels/ (as unigen_kernels)."""
    import ast
    for base, pkg in (("unigen", "unigen"), ("kernels", "unigen_kernels")):
        for folder, _, files in os.walk(os.path.join(ROOT, base)):
            for name in sorted(files):
                if name.endswith(".py"):
                    path = os.path.join(folder, name)
                    rel = os.path.relpath(path, os.path.join(ROOT, base))[:-3]
                    with open(path) as f:
                        yield ".".join([pkg, *rel.split(os.sep)]).removesuffix(".__init__"), path, ast.parse(f.read())


def _imported(module, path, node):
    """The module names an import node reads, counted as ../shared/tools/import_cycles.py counts them:
    `from a import b` reads `a` and `a.b`; a relative import resolves against `module`."""
    import ast
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
        return [node.module] + [f"{node.module}.{a.name}" for a in node.names]
    if isinstance(node, ast.ImportFrom) and node.level > 0:
        package = module.split(".")
        if not path.endswith("__init__.py"):  # a plain module's package is one level up
            package = package[:-1]
        up = package[: len(package) - node.level + 1]
        return [".".join(up + ([node.module] if node.module else []))]
    return []


def _unit(module):
    """The sub-package a module belongs to; `unigen` itself (the package front) is the unit "__init__"."""
    parts = module.split(".")
    if parts[0] == "unigen_kernels" or module == "unigen.kernels" or module.startswith("unigen.kernels."):
        return "kernels"
    if parts[0] != "unigen":
        return None
    return parts[1] if len(parts) > 1 else "__init__"


def test_no_import_cycles_between_subpackages():
    import ast
    # An edge per import, lazy ones included; the front (unigen/__init__.py) is a unit of its own, so a
    # module that imports `unigen` closes a cycle through whatever the front imports.
    edges = {}
    for module, path, tree in _package_modules():
        src = _unit(module)
        for node in ast.walk(tree):
            for target in _imported(module, path, node):
                dst = _unit(target)
                if dst and dst != src:
                    edges.setdefault(src, set()).add(dst)

    def reaches(a, b, seen=()):
        return any(n == b or (n not in seen and reaches(n, b, seen + (n,))) for n in edges.get(a, ()))

    cycles = sorted({tuple(sorted((a, b))) for a in edges for b in edges[a] if reaches(b, a)})
    assert not cycles, f"import cycles between sub-packages: {cycles} ({ {k: sorted(v) for k, v in edges.items()} })"


def test_no_module_inside_unigen_uses_the_package_front():
    # DESIGN.md principle 12: the front (`unigen.from_pretrained`, ...) is for users; a module inside the
    # package imports the submodule it needs (`from unigen.pretrained import from_pretrained`,
    # `import unigen.parallel as parallel`). `import unigen` and `from unigen import x` (even of a
    # submodule) count as the front, as the shared import_cycles tool counts them; so does reaching a
    # front name (`unigen.from_pretrained`) through the `unigen` a submodule import binds.
    import ast
    with open(os.path.join(ROOT, "unigen", "__init__.py")) as f:
        front = ast.parse(f.read())
    front_names = {n.name for n in front.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    front_names |= {t.id for n in front.body if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Name)}
    assert "from_pretrained" in front_names, front_names
    found = []
    for module, path, tree in _package_modules():
        if module == "unigen":
            continue
        for node in ast.walk(tree):
            uses_front = any(_unit(t) == "__init__" for t in _imported(module, path, node))
            uses_front |= (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                           and node.value.id == "unigen" and node.attr in front_names)
            if uses_front:
                found.append(f"{os.path.relpath(path, ROOT)}:{node.lineno}: {ast.unparse(node)}")
    assert not found, "modules inside unigen/ use the package front; import the submodule instead:\n" + "\n".join(found)


def test_loaders_below_training_know_work_dirs(tmp_path):
    # A task's frozen encoder and `python -m unigen.convert` load through unigen.convert's registry without
    # importing training (which imports them); the work-dir source still answers there, imported by name
    # (registry.ABOVE) on the first lookup that finds no loader. A fresh process, so nothing else imported it.
    import subprocess
    import sys
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "config.json").write_text("{}")
    code = ("import sys; from unigen.convert import registry; "
            "assert 'unigen.training' not in sys.modules, 'convert imported training'; "
            "found = registry.folder_loader(sys.argv[1]); print(found and found[0])")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=300,
                         cwd=str(tmp_path), env=dict(os.environ, PYTHONSAFEPATH="1"))
    assert out.returncode == 0 and out.stdout.strip() == "unigen training work dir", out.stdout + out.stderr[-2000:]


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
    # The modules whose every test compares with (or builds its inputs with) torch / diffusers: the
    # DiT and SANA references, the released networks, the flow-match scheduler against diffusers'
    # grids, and the Flux pipeline and the text-to-image CLI on folders diffusers writes.
    assert skipped == ["tests/test_dit_parity.py", "tests/test_flow_match_scheduler.py", "tests/test_flux_pipeline.py",
                       "tests/test_released_networks.py", "tests/test_sana_block.py",
                       "tests/test_text_to_image_cli.py"], out.stdout[-2000:]
