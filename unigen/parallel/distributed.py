"""Multi-process start-up: one call at the top of a training script.

`initialize()` must run before anything touches a JAX backend. It starts
`jax.distributed` when there is more than one process, from (in order) its arguments,
the JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID environment, or a
cluster jax detects itself (SLURM, Open MPI); with none of those it does nothing, so
the same script runs unchanged on one machine.
"""

from __future__ import annotations

import logging
import os
from typing import Sequence

import jax

log = logging.getLogger("unigen.parallel")

# Environment markers of the launchers jax.distributed auto-detects; `initialize` with
# no arguments is only attempted when one of them says there are several processes.
_CLUSTER_SIZES = ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE")


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value in (None, ""):
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} must be an integer") from None


def is_initialized() -> bool:
    from jax._src import distributed  # jax has no public "already initialized?" query

    return distributed.global_state.client is not None


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    local_device_ids: int | Sequence[int] | None = None,
) -> tuple[int, int]:
    """Start jax.distributed if this is a multi-process run; return
    (process_index, process_count). Safe to call twice."""
    if is_initialized():
        return jax.process_index(), jax.process_count()
    coordinator_address = coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS") or None
    num_processes = num_processes if num_processes is not None else _env_int("JAX_NUM_PROCESSES")
    process_id = process_id if process_id is not None else _env_int("JAX_PROCESS_ID")

    explicit = coordinator_address is not None or num_processes is not None or process_id is not None
    cluster = any((_env_int(n) or 0) > 1 for n in _CLUSTER_SIZES)
    if not explicit and not cluster:
        return 0, 1  # single process: nothing to start
    if explicit and num_processes == 1:
        return 0, 1
    if explicit and None in (coordinator_address, num_processes, process_id) and not cluster:
        raise ValueError(
            "distributed initialize: got coordinator_address="
            f"{coordinator_address!r}, num_processes={num_processes!r}, process_id="
            f"{process_id!r}; give all three (flags or JAX_COORDINATOR_ADDRESS / "
            "JAX_NUM_PROCESSES / JAX_PROCESS_ID), or none under SLURM / Open MPI"
        )

    # CPU processes exchange collectives through gloo; the default CPU client has no
    # cross-process collectives. The flag only affects the CPU backend, so it is
    # harmless on GPU hosts (whose CPU client may still run small host computations).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    kwargs = dict(
        coordinator_address=coordinator_address,
        num_processes=num_processes,
        process_id=process_id,
        local_device_ids=local_device_ids,
    )
    # Under SLURM / Open MPI with no flags jax fills the missing values itself.
    jax.distributed.initialize(**{k: v for k, v in kwargs.items() if v is not None})
    log.info(
        "jax.distributed: process %d of %d, %d local / %d global devices",
        jax.process_index(), jax.process_count(), jax.local_device_count(), jax.device_count(),
    )
    return jax.process_index(), jax.process_count()


def shutdown() -> None:
    """Stop jax.distributed if it was started (end of a script or test)."""
    if is_initialized():
        jax.distributed.shutdown()
