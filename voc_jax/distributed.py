"""JAX's multi-controller runtime: start it, and move data between processes and the mesh.

With one process every function here is the single-host behaviour, so the training code calls
them unconditionally. ``initialize`` runs ``jax.distributed.initialize`` when the config asks
for it or a cluster is detected (SLURM with more than one task, Open MPI, or an explicit
coordinator address); it must run before anything touches a JAX device.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding

from voc_jax.errors import WorkdirBusy
from voc_jax.workdir_lock import WorkdirLock

log = logging.getLogger(__name__)

CLUSTER_HINTS = ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE")


def cluster_detected(environ: dict[str, str] | None = None) -> bool:
    env = os.environ if environ is None else environ
    if env.get("JAX_COORDINATOR_ADDRESS"):
        return True
    return any(int(env.get(name, "1") or 1) > 1 for name in CLUSTER_HINTS)


def initialize(config: ml_collections.ConfigDict) -> bool:
    """Start the distributed runtime if wanted; True when running multi-process."""
    if not (config.get("distributed", False) or cluster_detected()):
        return False
    if jax.distributed.is_initialized():  # (must not touch a backend before initialize)
        return True
    d = config.get("cluster") or ml_collections.ConfigDict(
        {
            "coordinator": "",
            "num_processes": 0,
            "process_id": -1,
            "local_device_ids": (),
            "cpu_collectives": "",
        }
    )
    if d.cpu_collectives:
        jax.config.update("jax_cpu_collectives_implementation", d.cpu_collectives)
    kwargs: dict[str, Any] = {}
    if d.coordinator:
        kwargs["coordinator_address"] = d.coordinator
    if d.num_processes:
        kwargs["num_processes"] = d.num_processes
    if d.process_id >= 0:
        kwargs["process_id"] = d.process_id
    if d.local_device_ids:
        kwargs["local_device_ids"] = list(d.local_device_ids)
    jax.distributed.initialize(**kwargs)
    log.info(
        "distributed: process %d of %d, %d local / %d global devices",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
    )
    return True


def is_main() -> bool:
    """Process 0: the one that logs, writes metrics and result files."""
    return jax.process_index() == 0


def global_batch(batch: dict[str, np.ndarray], sharding: NamedSharding) -> dict[str, jax.Array]:
    """This process's slice of a batch -> global arrays along the data axis."""
    if jax.process_count() == 1:
        return {k: jax.device_put(v, sharding) for k, v in batch.items()}
    return {
        k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()
    }


def to_host(tree: Any) -> Any:
    """Every value of a tree of (possibly sharded across processes) arrays, on every host."""
    if jax.process_count() == 1:
        return jax.device_get(tree)
    return multihost_utils.process_allgather(tree, tiled=True)


def barrier(name: str) -> None:
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


@contextlib.contextmanager
def workdir_lock(workdir: str | Path, purpose: str) -> Iterator[WorkdirLock]:
    """The workdir's lock for one job: process 0 takes it and every process learns whether it
    could, so that all of them stop together when another run holds it."""
    lock = WorkdirLock(workdir, purpose, enabled=is_main())
    error: WorkdirBusy | None = None
    try:
        lock.acquire()
    except WorkdirBusy as e:
        error = e
    if jax.process_count() > 1:
        ok = bool(multihost_utils.broadcast_one_to_all(np.array(error is None)))
        if not ok and error is None:
            error = WorkdirBusy(f"{workdir} is in use by another run (process 0 could not lock it)")
    if error is not None:
        raise error
    try:
        yield lock
    finally:
        lock.release()
