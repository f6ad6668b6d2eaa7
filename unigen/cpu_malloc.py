"""Opt-in glibc malloc settings for XLA:CPU training of large models.

XLA:CPU allocates every temporary buffer of a jitted step afresh on each call. With glibc's
defaults, buffers above the mmap threshold, and those of the per-thread arenas, go back to
the kernel when freed, so every step touches gigabytes of new pages: a DiT-S/2 train step
at batch 32 took 1.3 million minor page faults (5 GiB) and 9.2 s per step on the 2-core
development machine. One arena, no mmap and no trimming keep the freed memory for the next
step: 69 faults and 6.7-7.6 s. But the small digits main job ran 10% slower with them
(9.3 against 10.4 steps/s: its data-loader threads and XLA's then share one arena), two
arenas helped in one run and not in the next, and without the arena limit nothing changed
(bench/RESULTS.md). So this is opt-in: UNIGEN_CPU_MALLOC=1.

GLIBC_TUNABLES is read only when a process starts, so with the opt-in the command-line
entry points re-execute themselves once with it set, before any work is done; only where
no accelerator is present (or JAX_PLATFORMS=cpu). (`mallopt` called before XLA starts its
threads did the same in a test, but only with -1 as the trim threshold, which glibc reads
as SIZE_MAX: an implementation detail, not an interface.) The process then keeps its peak
memory until it exits. Library code never re-executes anything: call
`reexec_with_cpu_malloc()` at the top of your own script, or export the GLIBC_TUNABLES that
`tuned_environ()` returns.
"""

from __future__ import annotations

import os
import sys

TUNABLES = {
    "glibc.malloc.arena_max": "1",
    "glibc.malloc.mmap_max": "0",
    "glibc.malloc.trim_threshold": str(64 << 30),
}
OPT_IN = "UNIGEN_CPU_MALLOC"         # "1" turns the re-execution on
_APPLIED = "UNIGEN_CPU_MALLOC_APPLIED"  # set in the re-executed process: never loop
_ACCELERATOR_DEVICES = ("/dev/nvidiactl", "/dev/kfd", "/dev/accel0", "/dev/vfio/vfio")


def _is_glibc_linux() -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        return bool(os.confstr("CS_GNU_LIBC_VERSION"))
    except (ValueError, OSError):  # musl and others do not name a glibc version
        return False


def cpu_only(environ) -> bool:
    """True when jax will run on the CPU: JAX_PLATFORMS asks for cpu alone, or no GPU/TPU
    device file exists (decided without importing jax, which is the point)."""
    platforms = environ.get("JAX_PLATFORMS", "").strip().lower()
    if platforms:
        return platforms == "cpu"
    return not any(os.path.exists(p) for p in _ACCELERATOR_DEVICES)


def wants_tuning(environ) -> bool:
    return (environ.get(OPT_IN, "0") == "1" and _APPLIED not in environ
            and _is_glibc_linux() and cpu_only(environ))


def tuned_environ(environ) -> dict:
    """A copy of `environ` whose GLIBC_TUNABLES adds ours; tunables the user already set win."""
    current = [item for item in environ.get("GLIBC_TUNABLES", "").split(":") if item]
    set_by_user = {item.split("=", 1)[0] for item in current}
    ours = [f"{k}={v}" for k, v in TUNABLES.items() if k not in set_by_user]
    env = dict(environ)
    env["GLIBC_TUNABLES"] = ":".join(current + ours)
    return env


def reexec_with_cpu_malloc() -> None:
    """With UNIGEN_CPU_MALLOC=1 on a CPU-only machine, replace this process by the same
    command with the tuned allocator (see the module docstring); otherwise do nothing.
    Call it first thing in a script's `if __name__ == "__main__":` block, never from
    library code."""
    if not wants_tuning(os.environ):
        return
    env = tuned_environ(os.environ)
    env[_APPLIED] = "1"
    sys.stdout.flush()
    sys.stderr.flush()
    # orig_argv keeps the interpreter's own flags and a `-m module` form intact.
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)


def console_entry(main) -> int:
    """What the installed `unigen-*` commands run: the opt-in re-execution, then `main()`."""
    reexec_with_cpu_malloc()
    return main()
