"""Device meshes and placing host data on them.

Training uses one 1-D mesh ``('data',)`` over every device of every host: batches are
sharded along ``'data'``, parameters replicated, and one ``jax.jit`` spans all devices.
Evaluation is per example, so each host uses a mesh over its own devices only.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

AXIS = 'data'


def get_mesh() -> Mesh:
    """A 1-D mesh ``('data',)`` over every device of every host."""
    return Mesh(np.asarray(jax.devices()), (AXIS,))


def local_mesh() -> Mesh:
    """A 1-D mesh ``('data',)`` over this host's devices (no communication between hosts)."""
    return Mesh(np.asarray(jax.local_devices()), (AXIS,))


def to_global(local: np.ndarray, mesh: Mesh, spec: P) -> jax.Array:
    """Joins each host's rows of ``local`` into one global array sharded as ``spec``."""
    return jax.make_array_from_process_local_data(NamedSharding(mesh, spec), local)


def shard_rows(x: np.ndarray, mesh: Mesh) -> jax.Array:
    """Host rows split over the devices of a local ``mesh`` (one device: unsharded)."""
    if len(mesh.devices) == 1 or x.shape[0] % len(mesh.devices):
        return jax.numpy.asarray(x)
    return jax.device_put(x, NamedSharding(mesh, P(AXIS)))
