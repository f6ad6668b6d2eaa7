"""The environment for a subprocess that runs on `count` fake CPU devices."""

import os


def fake_devices_env(count: int, **extra: str) -> dict:
    """os.environ plus `count` host-platform devices, keeping the XLA flags the session set
    (tests/conftest.py), and `extra` variables."""
    flags = os.environ.get("XLA_FLAGS", "")
    return dict(os.environ, XLA_FLAGS=f"{flags} --xla_force_host_platform_device_count={count}".strip(), **extra)
