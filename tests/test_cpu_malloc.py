"""The CPU allocator re-execution (unigen/cpu_malloc.py): when it applies, how it merges
with the user's GLIBC_TUNABLES, and that a script really restarts once with it set."""

import os
import subprocess
import sys

import pytest

from unigen import cpu_malloc


def test_tuned_environ_adds_ours_and_keeps_the_users():
    env = cpu_malloc.tuned_environ({"GLIBC_TUNABLES": "glibc.malloc.arena_max=4:glibc.foo=1", "X": "y"})
    items = env["GLIBC_TUNABLES"].split(":")
    assert "glibc.malloc.arena_max=4" in items and "glibc.malloc.arena_max=1" not in items
    assert "glibc.foo=1" in items and "glibc.malloc.mmap_max=0" in items
    assert f"glibc.malloc.trim_threshold={64 << 30}" in items and env["X"] == "y"
    assert cpu_malloc.tuned_environ({})["GLIBC_TUNABLES"].count("glibc.malloc.") == 3


def test_when_it_applies():
    assert cpu_malloc.cpu_only({"JAX_PLATFORMS": "cpu"})
    assert not cpu_malloc.cpu_only({"JAX_PLATFORMS": "cuda"})
    assert not cpu_malloc.cpu_only({"JAX_PLATFORMS": "cuda,cpu"})
    assert not cpu_malloc.wants_tuning({"JAX_PLATFORMS": "cpu"})  # opt-in
    assert not cpu_malloc.wants_tuning({"JAX_PLATFORMS": "cuda", "UNIGEN_CPU_MALLOC": "1"})
    assert not cpu_malloc.wants_tuning({"JAX_PLATFORMS": "cpu", "UNIGEN_CPU_MALLOC": "1",
                                        "UNIGEN_CPU_MALLOC_APPLIED": "1"})


@pytest.mark.skipif(not cpu_malloc._is_glibc_linux(), reason="glibc tunables exist only on glibc Linux")
def test_a_script_reexecutes_once_with_the_tunables(tmp_path):
    script = tmp_path / "probe.py"
    script.write_text(
        "import os\n"
        "from unigen.cpu_malloc import reexec_with_cpu_malloc\n"
        "print('start', flush=True)\n"
        "reexec_with_cpu_malloc()\n"
        "print(os.environ.get('GLIBC_TUNABLES'), os.environ.get('UNIGEN_CPU_MALLOC_APPLIED'))\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GLIBC_TUNABLES", "UNIGEN_CPU"))}
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, check=True,
                         env={**env, "JAX_PLATFORMS": "cpu", "UNIGEN_CPU_MALLOC": "1"}).stdout.split("\n")
    assert out[0] == "start" and out[1] == "start"  # the script ran twice: before and after exec
    assert "glibc.malloc.arena_max=1" in out[2] and out[2].endswith(" 1")
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, check=True,
                         env={**env, "JAX_PLATFORMS": "cpu"}).stdout.split("\n")
    assert out[0] == "start" and out[1] == "None None"
