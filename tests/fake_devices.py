"""The environment for a subprocess that runs on `count` fake CPU devices."""

import os


def fake_devices_env(count: int, base: dict | None = None, **extra: str) -> dict:
    """`base` (default os.environ) plus `extra` variables, with `count` host-platform devices
    added to its XLA flags rather than replacing them (flags the caller set stay in force)."""
    env = dict(os.environ if base is None else base, **extra)
    env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={count}".strip()
    return env
