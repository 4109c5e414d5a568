"""Throughput measurement: compile time apart, warm-up, `block_until_ready`, repeated timings.

Library code only: it returns records; `scripts/benchmark.py` prints and writes them.
"""

import dataclasses
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rlli_jax.env.batched import step_batch
from rlli_jax.env.service import DiffusionServiceEnv


@dataclasses.dataclass(frozen=True)
class Measurement:
    """Timing of one benchmark case. Throughput is `work_per_call` items per second."""

    suite: str
    case: str
    num_envs: int
    work_per_call: int
    compile_s: float
    times_s: tuple[float, ...]

    @property
    def median_s(self) -> float:
        return statistics.median(self.times_s)

    @property
    def throughput_median(self) -> float:
        return self.work_per_call / self.median_s

    @property
    def throughput_min(self) -> float:
        return self.work_per_call / max(self.times_s)

    @property
    def throughput_max(self) -> float:
        return self.work_per_call / min(self.times_s)

    def as_dict(self) -> dict[str, Any]:
        record = dataclasses.asdict(self)
        record.update(
            median_s=self.median_s,
            throughput_median=self.throughput_median,
            throughput_min=self.throughput_min,
            throughput_max=self.throughput_max,
        )
        return record


def machine_info() -> dict[str, Any]:
    """Return the device, backend and library versions the numbers were measured with."""
    device = jax.devices()[0]
    return {
        "backend": jax.default_backend(),
        "device": getattr(device, "device_kind", str(device)),
        "num_devices": jax.device_count(),
        "jax_version": jax.__version__,
        "python": platform.python_version(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": _cpu_count(),
    }


def _cpu_count() -> int | None:
    import os

    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count()


def time_compiled(
    function: Callable[..., Any], args: tuple, *, repeats: int, warmup: int = 1
) -> tuple[float, tuple[float, ...]]:
    """Compile `function` (a jitted callable) on `args`, then time `repeats` calls.

    Returns (compile seconds, per-call seconds); every call is synchronised with
    `block_until_ready` so asynchronous dispatch does not hide work.
    """
    start = time.perf_counter()
    compiled = function.lower(*args).compile()
    compile_s = time.perf_counter() - start
    for _ in range(warmup):
        jax.block_until_ready(compiled(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        times.append(time.perf_counter() - start)
    return compile_s, tuple(times)


def make_env_rollout(env: DiffusionServiceEnv, params, num_envs: int, num_steps: int):
    """Return a jitted `rollout(key) -> mean reward` of `num_steps` vmapped steps of `num_envs`
    environments under a uniform random policy, the whole loop in one `lax.scan`."""
    action_dim = env.num_actions
    reset = jax.vmap(env.reset, in_axes=(0, None))

    def rollout(key):
        key_reset, key_loop = jax.random.split(key)
        _, state = reset(jax.random.split(key_reset, num_envs), params)

        def body(carry, key_slot):
            state, reward_sum = carry
            key_action, key_step = jax.random.split(key_slot)
            action = jax.random.uniform(key_action, (num_envs, action_dim), minval=-1.0, maxval=1.0)
            _, state, reward, _, _, _ = step_batch(
                env, jax.random.split(key_step, num_envs), state, action, params
            )
            return (state, reward_sum + jnp.sum(reward)), None

        (_, reward_sum), _ = jax.lax.scan(
            body, (state, jnp.float32(0.0)), jax.random.split(key_loop, num_steps)
        )
        return reward_sum / (num_envs * num_steps)

    return jax.jit(rollout)


def benchmark_env(
    num_envs_list: list[int], *, num_steps: int, repeats: int, num_users: int = 8
) -> list[Measurement]:
    """Measure environment steps per second with a random policy for each env count."""
    env = DiffusionServiceEnv(num_users=num_users)
    params = env.default_params
    measurements = []
    for num_envs in num_envs_list:
        rollout = make_env_rollout(env, params, num_envs, num_steps)
        compile_s, times = time_compiled(rollout, (jax.random.key(0),), repeats=repeats)
        measurements.append(
            Measurement(
                suite="env",
                case=f"DiffusionService-v0 N={num_users} random policy",
                num_envs=num_envs,
                work_per_call=num_envs * num_steps,
                compile_s=compile_s,
                times_s=times,
            )
        )
    return measurements


def benchmark_numpy_reference(
    num_envs: int, *, num_steps: int, repeats: int, num_users: int = 8
) -> Measurement:
    """Measure the NumPy reference (a Python loop over environment objects) with the same
    default QoE model and a uniform random policy, for a side-by-side ratio."""
    from rlli_jax.env.numpy_reference import NumpyDiffusionServiceEnv

    env = DiffusionServiceEnv(num_users=num_users)
    params = env.default_params
    environments = [
        NumpyDiffusionServiceEnv(num_users, env.horizon, params, env.qoe_model.name, seed=i)
        for i in range(num_envs)
    ]
    for reference in environments:
        reference.reset()
    rng = np.random.default_rng(0)

    def rollout():
        for _ in range(num_steps):
            for reference in environments:
                reference.step(rng.uniform(-1.0, 1.0, env.num_actions))

    rollout()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        rollout()
        times.append(time.perf_counter() - start)
    return Measurement(
        suite="env",
        case=f"NumPy reference N={num_users} random policy (Python loop)",
        num_envs=num_envs,
        work_per_call=num_envs * num_steps,
        compile_s=0.0,
        times_s=tuple(times),
    )
