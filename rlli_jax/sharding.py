"""Placement of a population (or of one run's environments) over every visible device.

A sweep stacks P members along a leading population axis and runs `jax.vmap` of the training
program over it. Here that axis is split over a one-dimensional `jax.sharding.Mesh` of all
devices (`jax.devices()`, every process's devices in a multi-host run) with
`NamedSharding(mesh, PartitionSpec(axis))`, and `jax.jit` partitions the program by those
shardings. Members never exchange data, so the partitioned program needs no collectives and
`shard_map` is not used. The only cross-device traffic is gathering results to the host.

A population whose size does not divide the device count is padded with copies of its last
member (valid values, so the padding cannot produce NaNs) and `unpad` drops them again.

For one large run, `env_axis_shardings` splits the `num_envs` axis of a `TrainState` instead:
environment state, observations and returns are sharded, while parameters, optimiser states
and the replay buffer are replicated. XLA inserts the gathers that the replay write and the
updates need (GSPMD), so the run computes the same function as on one device.
"""

import math
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

POPULATION_AXIS = "population"
ENV_AXIS = "env"


def make_mesh(
    axis_name: str = POPULATION_AXIS, devices: Sequence[jax.Device] | None = None
) -> Mesh:
    """Build a one-axis mesh over `devices` (default: every device of every process)."""
    devices = list(jax.devices() if devices is None else devices)
    if not devices:
        raise ValueError("cannot build a mesh over an empty device list")
    return Mesh(np.asarray(devices), (axis_name,))


def leading_axis_sharding(mesh: Mesh) -> NamedSharding:
    """Shard the leading axis of an array over the mesh's only axis."""
    return NamedSharding(mesh, PartitionSpec(mesh.axis_names[0]))


def replicated_sharding(mesh: Mesh) -> NamedSharding:
    """Keep a full copy of an array on every device of the mesh."""
    return NamedSharding(mesh, PartitionSpec())


def padded_size(size: int, num_devices: int) -> int:
    """Return the smallest multiple of `num_devices` that is >= `size`."""
    if size < 1 or num_devices < 1:
        raise ValueError(f"invalid size = {size} or num_devices = {num_devices}: both must be >= 1")
    return math.ceil(size / num_devices) * num_devices


def pad(tree: Any, size: int) -> Any:
    """Pad host arrays along axis 0 to `size` rows by repeating the last row."""

    def pad_leaf(leaf):
        leaf = np.asarray(leaf)
        missing = size - leaf.shape[0]
        if missing < 0:
            raise ValueError(f"cannot pad {leaf.shape[0]} rows to {size}: already larger")
        if missing == 0:
            return leaf
        return np.concatenate([leaf, np.repeat(leaf[-1:], missing, axis=0)], axis=0)

    return jax.tree.map(pad_leaf, tree)


def unpad(tree: Any, size: int) -> Any:
    """Keep the first `size` rows along axis 0, dropping the padding."""
    return jax.tree.map(lambda leaf: leaf[:size], tree)


def place(host_tree: Any, sharding: NamedSharding) -> Any:
    """Put host arrays onto the devices of `sharding`, one global `jax.Array` per leaf.

    Every process passes the same full host arrays and contributes the shards its own
    devices hold, so this works in single- and multi-process runs alike.
    """

    def place_leaf(leaf):
        leaf = np.asarray(leaf)
        return jax.make_array_from_callback(leaf.shape, sharding, lambda index: leaf[index])

    return jax.tree.map(place_leaf, host_tree)


def to_host(tree: Any) -> Any:
    """Copy global arrays to NumPy on every process, gathering shards from other processes."""

    def fetch(leaf):
        if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
            return np.asarray(multihost_utils.process_allgather(leaf, tiled=True))
        return np.asarray(jax.device_get(leaf))

    return jax.tree.map(fetch, tree)


def shard_counts(array: jax.Array) -> dict[jax.Device, int]:
    """Return the number of leading-axis rows stored on each device (for tests and logs)."""
    return {shard.device: shard.data.shape[0] for shard in array.addressable_shards}


def env_axis_shardings(state: Any, mesh: Mesh, num_envs: int) -> Any:
    """Shardings of a `TrainState` that split its [num_envs] axis over the mesh.

    Args:
        state: a `TrainState` or its `jax.eval_shape`.
        mesh: a one-axis mesh whose size divides `num_envs`.

    Raises:
        ValueError: `num_envs` is not a multiple of the mesh size.
    """
    num_devices = mesh.devices.size
    if num_envs % num_devices:
        raise ValueError(
            f"invalid train.num_envs = {num_envs}: must be a multiple of the {num_devices} "
            "devices to shard the environment axis"
        )
    env_sharded = leading_axis_sharding(mesh)
    replicated = replicated_sharding(mesh)
    shardings = jax.tree.map(lambda _: replicated, state)
    return shardings.replace(
        env_state=jax.tree.map(lambda _: env_sharded, state.env_state),
        obs=env_sharded,
        episode_return=env_sharded,
    )
