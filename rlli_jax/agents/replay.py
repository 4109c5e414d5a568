"""Uniform replay buffer of transitions, on flashbax, with a memory check before allocation.

The buffer is flashbax's item buffer (`fbx.make_item_buffer`, flashbax 0.1.3): one ring of
`capacity` transitions, written in insertion order and sampled uniformly with replacement from
the filled part. `init`, `add` and `sample` are pure, so they run inside `jit` and `lax.scan`.
"""

import dataclasses
import os
from collections.abc import Callable

import flashbax as fbx
import jax
import jax.numpy as jnp
import numpy as np

from rlli_jax.agents.ddpg import Transition

ReplayState = fbx.item_buffer.TrajectoryBufferState

_BYTES_PER_FLOAT32 = 4


@dataclasses.dataclass(frozen=True)
class Replay:
    """Pure functions of a replay buffer with its static sizes bound.

    init(example) -> state: allocates `capacity` slots shaped like one unbatched Transition.
    add(state, batch) -> state: appends a Transition with leading axis [num_added]; the oldest
        entries are overwritten once the buffer is full.
    sample(state, key) -> Transition [batch_size, ...], drawn uniformly with replacement.
    can_sample(state) -> bool scalar, True once `min_size` transitions were added.
    """

    capacity: int
    batch_size: int
    min_size: int
    init: Callable[[Transition], ReplayState]
    add: Callable[[ReplayState, Transition], ReplayState]
    sample: Callable[[ReplayState, jax.Array], Transition]
    can_sample: Callable[[ReplayState], jax.Array]


def make_replay_buffer(capacity: int, batch_size: int, min_size: int | None = None) -> Replay:
    """Build a uniform replay buffer of `capacity` transitions; allocates nothing.

    Args:
        capacity: number of transitions stored.
        batch_size: transitions per `sample`.
        min_size: transitions needed before `can_sample` is True; defaults to batch_size.
    """
    if min_size is None:
        min_size = batch_size
    for name, value in (("capacity", capacity), ("batch_size", batch_size), ("min_size", min_size)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"invalid {name} = {value!r}: must be a positive int")
    if batch_size > capacity:
        raise ValueError(f"invalid batch_size = {batch_size}: must be <= capacity = {capacity}")
    if min_size > capacity:
        raise ValueError(f"invalid min_size = {min_size}: must be <= capacity = {capacity}")

    buffer = fbx.make_item_buffer(
        max_length=capacity,
        min_length=min_size,
        sample_batch_size=batch_size,
        add_batches=True,
    )

    def sample(state: ReplayState, key: jax.Array) -> Transition:
        return buffer.sample(state, key).experience

    return Replay(
        capacity=capacity,
        batch_size=batch_size,
        min_size=min_size,
        init=buffer.init,
        add=buffer.add,
        sample=sample,
        can_sample=buffer.can_sample,
    )


def example_transition(obs_dim: int, action_dim: int) -> Transition:
    """Return one unbatched float32 Transition of zeros, the layout `Replay.init` expects."""
    return Transition(
        obs=jnp.zeros((obs_dim,), jnp.float32),
        action=jnp.zeros((action_dim,), jnp.float32),
        reward=jnp.zeros((), jnp.float32),
        next_obs=jnp.zeros((obs_dim,), jnp.float32),
        terminated=jnp.zeros((), jnp.float32),
    )


def estimate_replay_bytes(capacity: int, obs_dim: int, action_dim: int) -> int:
    """Estimate the device bytes of a float32 Transition buffer of `capacity` entries.

    Counts the stored arrays only (obs, next_obs, action, reward, terminated); the ring index
    and flag add a few bytes. `add` under `jit` may hold a second copy while it writes unless
    the buffer state is donated, so leave headroom.
    """
    floats_per_transition = 2 * obs_dim + action_dim + 2  # obs, next_obs, action, 2 scalars
    return int(capacity) * floats_per_transition * _BYTES_PER_FLOAT32


# Linux's report of free memory, read for CPU devices.
MEMINFO_PATH = "/proc/meminfo"


def available_device_bytes(device: jax.Device | None = None) -> tuple[int, str]:
    """Return the free memory of `device` in bytes and where the number comes from.

    Accelerators report bytes_limit - bytes_in_use from `device.memory_stats()`. CPU devices
    (whose memory_stats() is None) use MemAvailable from /proc/meminfo on Linux, and psutil's
    available memory where /proc/meminfo is missing (macOS, Windows) or has no readable
    MemAvailable line.

    Raises:
        ValueError: no source is available on this platform.
    """
    if device is None:
        device = jax.local_devices()[0]
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    if stats and "bytes_limit" in stats:
        free = int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))
        return free, f"{device.platform} device {device.id} memory_stats()"
    if os.path.exists(MEMINFO_PATH):
        available = _meminfo_available_bytes()
        if available is not None:
            return available, f"{MEMINFO_PATH} MemAvailable"
    return _psutil_available_bytes(), "psutil.virtual_memory().available"


def _psutil_available_bytes() -> int:
    try:
        import psutil  # imported here, so Linux hosts with MemAvailable never need it
    except ImportError as error:
        raise ValueError(
            f"cannot read free memory: {MEMINFO_PATH} is missing or has no MemAvailable line, "
            "the device reports no memory_stats() and psutil is not installed; install it "
            "with pip install psutil"
        ) from error
    return int(psutil.virtual_memory().available)


def _meminfo_available_bytes(path: str | None = None) -> int | None:
    """Return MemAvailable from `path` (default: MEMINFO_PATH) in bytes, or None when it cannot
    be read.

    Linux before 3.14 has no MemAvailable line, and a sandbox may deny the read. psutil then
    estimates the free memory from the other lines.
    """
    try:
        with open(MEMINFO_PATH if path is None else path) as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024  # the value is in kB
    except (OSError, ValueError, IndexError):
        return None
    return None


class DeviceMemoryError(ValueError):
    """Arrays of a config (replay buffer, networks) that do not fit in free device memory.

    A subclass of ValueError, so callers that catch the config's ValueErrors still catch it,
    while a caller that handles out-of-memory cases (the benchmark) can tell it apart.
    """


class ReplayMemoryError(DeviceMemoryError):
    """A replay buffer that does not fit in the free memory of its device."""


def check_replay_memory(bytes_needed: int, device: jax.Device | None = None) -> None:
    """Raise ReplayMemoryError if `bytes_needed` exceeds the free memory of `device`.

    Args:
        bytes_needed: e.g. from `estimate_replay_bytes`.
        device: defaults to the first local device.

    Raises:
        ReplayMemoryError: `bytes_needed` exceeds the free memory.
        ValueError: this platform reports no free memory (see `available_device_bytes`).
    """
    free_bytes, source = available_device_bytes(device)
    if bytes_needed > free_bytes:
        raise ReplayMemoryError(
            f"replay buffer needs {bytes_needed / 2**20:.1f} MiB ({bytes_needed} bytes) but only "
            f"{free_bytes / 2**20:.1f} MiB ({free_bytes} bytes) are free according to {source}; "
            "reduce buffer_size or num_envs"
        )


def make_replay(
    capacity: int,
    batch_size: int,
    obs_dim: int,
    action_dim: int,
    min_size: int | None = None,
    device: jax.Device | None = None,
) -> tuple[Replay, ReplayState]:
    """Check the memory, then build the buffer and allocate its empty state.

    Returns:
        The buffer functions and the initial state, placed on the default device.

    Raises:
        ValueError: a size is invalid, or the buffer does not fit in free memory.
    """
    replay = make_replay_buffer(capacity, batch_size, min_size)
    check_replay_memory(estimate_replay_bytes(capacity, obs_dim, action_dim), device)
    state = replay.init(example_transition(obs_dim, action_dim))
    return replay, state


def replay_size(state: ReplayState) -> jax.Array:
    """Return the number of valid transitions stored, an int32 scalar."""
    capacity = state.experience.reward.shape[1]  # experience leaves are [1, capacity, ...]
    return jnp.where(state.is_full, capacity, state.current_index).astype(np.int32)
