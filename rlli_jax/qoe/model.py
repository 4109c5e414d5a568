"""The pluggable QoE function the environment calls: (params, traits, quality, latency) -> MOS.

A QoE model is a static, hashable object (it is part of the environment, a static argument of
`jit`); its parameters are an ordinary pytree stored in `EnvParams.qoe_params`, so they can be
swapped per run or vmapped over without recompiling.
"""

import dataclasses
from typing import Any, Protocol

import jax

from rlli_jax.qoe.simulator import simulated_mos


class QoEModel(Protocol):
    """Maps persona traits, image quality and waiting time to a mean opinion score in [1, 5]."""

    name: str

    def __call__(
        self, qoe_params: Any, traits: jax.Array, quality: jax.Array, latency_s: jax.Array
    ) -> jax.Array:
        """Return MOS [...] from traits [..., 5], quality [...] and latency in seconds [...]."""
        ...

    def default_params(self) -> Any:
        """Return the parameters the environment uses when none are given."""
        ...


@dataclasses.dataclass(frozen=True)
class SimulatorQoE:
    """The analytic persona simulator (noise-free MOS); it has no parameters."""

    name: str = "simulator"

    def __call__(self, qoe_params, traits, quality, latency_s):
        del qoe_params
        return simulated_mos(traits, quality, latency_s)

    def default_params(self):
        return {}


def default_qoe_model() -> QoEModel:
    """Return the QoE model the environment uses when none is given: the shipped reward network.

    Its `default_params()` load the packaged checkpoint (distilled from simulated ratings) from
    the installed package, so this works offline. The load is cached per version of the
    checkpoint's files (their sizes and modification times), so a rewritten file is read again.
    """
    # Imported here because reward_net imports flax, which the simulator path does not need.
    from rlli_jax.qoe.reward_net import RewardNetQoE

    return RewardNetQoE()
