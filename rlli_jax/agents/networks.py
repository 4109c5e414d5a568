"""Flax networks of the agents: the MLP actor, the twin critic and the diffusion noise network.

Hidden sizes are static module attributes, so a different size is a different compiled program
while the parameters stay ordinary pytrees that can be vmapped over a population.
"""

import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp


class MLP(nn.Module):
    """Dense layers with an activation after each hidden layer and a linear output layer."""

    hidden_sizes: Sequence[int]
    output_size: int
    activation: str = "relu"  # "relu" or "mish"

    @nn.compact
    def __call__(self, inputs: jax.Array) -> jax.Array:
        activation = _activation(self.activation)
        hidden = inputs
        for size in self.hidden_sizes:
            hidden = activation(nn.Dense(size)(hidden))
        return nn.Dense(self.output_size)(hidden)


def mish(x: jax.Array) -> jax.Array:
    """Compute Mish x tanh(softplus(x)) with one exp: tanh(log(1 + e)) = n / (n + 2), n = e (e + 2).

    Equal to `jax.nn.mish` to float32 rounding, and faster on CPU, where the three
    transcendentals of `jax.nn.mish` dominate the cost of the diffusion chain. For x > 20 the
    ratio is 1 in float32, so clamping the exponent there only prevents overflow.
    """
    e = jnp.exp(jnp.minimum(x, 20.0))
    n = e * (e + 2.0)
    return x * n / (n + 2.0)


def _activation(name: str):
    if name == "relu":
        return nn.relu
    if name == "mish":
        return mish
    raise ValueError(f"invalid activation = {name!r}: expected 'relu' or 'mish'")


class MLPActor(nn.Module):
    """Deterministic DDPG actor: obs [B, obs_dim] -> action [B, action_dim] in [-1, 1] (tanh)."""

    hidden_sizes: Sequence[int]
    action_dim: int

    @nn.compact
    def __call__(self, obs: jax.Array) -> jax.Array:
        return jnp.tanh(MLP(self.hidden_sizes, self.action_dim)(obs))


class TwinCritic(nn.Module):
    """Two independent Q networks on concat(obs, action).

    Returns (q1, q2), each [B], for obs [B, obs_dim] and action [B, action_dim].
    """

    hidden_sizes: Sequence[int]

    @nn.compact
    def __call__(self, obs: jax.Array, action: jax.Array) -> tuple[jax.Array, jax.Array]:
        inputs = jnp.concatenate([obs, action], axis=-1)  # [B, obs_dim + action_dim]
        q1 = MLP(self.hidden_sizes, 1, name="q1")(inputs)[..., 0]
        q2 = MLP(self.hidden_sizes, 1, name="q2")(inputs)[..., 0]
        return q1, q2


def sinusoidal_embedding(timesteps: jax.Array, dim: int) -> jax.Array:
    """Embed integer timesteps [...] as [..., dim] = (sin(t w_k), cos(t w_k)).

    The frequencies w_k = 10000^(-k / (dim/2 - 1)), k = 0..dim/2 - 1, follow the transformer
    positional encoding, as in the SinusoidalPosEmb of the Diffusion-QL code (Wang et al., 2023).
    """
    if dim < 4 or dim % 2:
        raise ValueError(f"invalid time embedding dim = {dim}: must be even and >= 4")
    half_dim = dim // 2
    frequencies = jnp.exp(-math.log(10000.0) / (half_dim - 1) * jnp.arange(half_dim))
    angles = jnp.asarray(timesteps, jnp.float32)[..., None] * frequencies  # [..., dim/2]
    return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)


class TimeEmbedding(nn.Module):
    """Sinusoidal embedding of the denoising step followed by Dense(2 dim) - Mish - Dense(dim)."""

    dim: int = 16

    @nn.compact
    def __call__(self, timesteps: jax.Array) -> jax.Array:
        embedding = sinusoidal_embedding(timesteps, self.dim)
        embedding = mish(nn.Dense(2 * self.dim)(embedding))
        return nn.Dense(self.dim)(embedding)


class StateEncoder(nn.Module):
    """State branch of the noise network: obs [B, obs_dim] -> features [B, feature_dim].

    The output is linear, so it adds to the first hidden layer of the noise network exactly as
    the state's block of a Dense layer on concat(x_t, time embedding, obs) would. That block is
    thereby computed once per action instead of once per denoising step.
    """

    hidden_sizes: Sequence[int]
    feature_dim: int

    @nn.compact
    def __call__(self, obs: jax.Array) -> jax.Array:
        return MLP(self.hidden_sizes, self.feature_dim, activation="mish")(obs)


class NoisePredictor(nn.Module):
    """Noise (epsilon) MLP with Mish: (x_t [B, A], time embedding [1, E], features) -> [B, A].

    The first hidden layer is Mish(W_x x_t + W_t time_embedding + state_features + b), which is
    a Dense layer on concat(x_t, time embedding, obs) with the obs block folded into
    StateEncoder, whose output width must therefore equal hidden_sizes[0]. The time block acts
    on one [1, E] row per step and is broadcast over the batch.
    """

    hidden_sizes: Sequence[int]
    action_dim: int

    @nn.compact
    def __call__(
        self, noisy_action: jax.Array, time_embedding: jax.Array, state_features: jax.Array
    ) -> jax.Array:
        first_size = self.hidden_sizes[0]
        hidden = (
            nn.Dense(first_size, name="action_input")(noisy_action)
            + nn.Dense(first_size, use_bias=False, name="time_input")(time_embedding)
            + state_features
        )
        hidden = mish(hidden)
        for size in self.hidden_sizes[1:]:
            hidden = mish(nn.Dense(size)(hidden))
        return nn.Dense(self.action_dim)(hidden)


class DiffusionActorNetwork(nn.Module):
    """Parameters of the diffusion actor, with one method per part of the reverse chain.

    The layout follows the noise MLP of GDMOPT (github.com/HongyangDu/GDMOPT, diffusion/model.py)
    with the state branch folded into the first hidden layer. `encode` runs once per action,
    `embed_time` once per chain on all T steps together, and `predict_noise` once per denoising
    step. `__call__` runs all three and exists for `init`.
    """

    action_dim: int
    hidden_sizes: Sequence[int] = (256, 256)
    encoder_hidden_sizes: Sequence[int] = (256,)
    time_embedding_dim: int = 16

    def setup(self):
        self.state_encoder = StateEncoder(self.encoder_hidden_sizes, self.hidden_sizes[0])
        self.time_embedding = TimeEmbedding(self.time_embedding_dim)
        self.noise_predictor = NoisePredictor(self.hidden_sizes, self.action_dim)

    def encode(self, obs: jax.Array) -> jax.Array:
        """Compute the state features [B, hidden_sizes[0]] for obs [B, obs_dim]."""
        return self.state_encoder(obs)

    def embed_time(self, timesteps: jax.Array) -> jax.Array:
        """Embed step indices [T] as [T, time_embedding_dim]."""
        return self.time_embedding(timesteps)

    def predict_noise(
        self, noisy_action: jax.Array, time_embedding: jax.Array, state_features: jax.Array
    ) -> jax.Array:
        """Predict the noise [B, action_dim] in noisy_action [B, action_dim]."""
        return self.noise_predictor(noisy_action, time_embedding, state_features)

    def __call__(self, obs: jax.Array, noisy_action: jax.Array, timesteps: jax.Array):
        state_features = self.encode(obs)
        time_embedding = self.embed_time(timesteps)
        return self.predict_noise(noisy_action, time_embedding, state_features)


class Actor(NamedTuple):
    """A policy as two pure functions, so the DDPG update works with any actor.

    init(key, obs_dim) -> params.
    apply(params, obs [B, obs_dim], key) -> action [B, action_dim] in [-1, 1]; an actor without
    internal randomness ignores the key.
    apply_with_penalty(params, obs, key) -> (action, penalty): the same action and a scalar
    that the actor loss adds, times `AgentConfig.bound_loss_coef`. None means a penalty of 0.
    """

    init: Callable[[jax.Array, int], Any]
    apply: Callable[[Any, jax.Array, jax.Array], jax.Array]
    apply_with_penalty: (
        Callable[[Any, jax.Array, jax.Array], tuple[jax.Array, jax.Array]] | None
    ) = None


def make_mlp_actor(action_dim: int, hidden_sizes: Sequence[int] = (256, 256)) -> Actor:
    """Build the deterministic tanh MLP actor of DDPG."""
    network = MLPActor(hidden_sizes=tuple(hidden_sizes), action_dim=action_dim)

    def init(key: jax.Array, obs_dim: int):
        return network.init(key, jnp.zeros((1, obs_dim), jnp.float32))

    def apply(params, obs: jax.Array, key: jax.Array) -> jax.Array:
        del key  # the MLP actor is deterministic
        return network.apply(params, obs)

    return Actor(init=init, apply=apply)
