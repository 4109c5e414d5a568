"""Distil a ratings dataset into the persona reward network (MSE regression on the ratings).

The dataset is split once into training and validation ratings. Inputs are normalised with the
training mean and standard deviation (stored in the parameters). Training runs whole epochs
under `jit` (a `lax.scan` over shuffled minibatches). It stops early when the validation loss
has not improved for `patience` epochs, and returns the best epoch's parameters.
"""

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import scipy.stats

from rlli_jax.config import SEED_MAX
from rlli_jax.qoe.dataset import RatingsDataset
from rlli_jax.qoe.reward_net import (
    DEFAULT_HIDDEN_SIZES,
    RewardNetQoE,
    reward_net_inputs,
    validate_hidden_sizes,
)
from rlli_jax.qoe.simulator import simulated_mos

# Smallest input standard deviation used for normalisation, so a constant input cannot divide
# by zero.
MIN_INPUT_STD = 1e-3


class TrainingDivergedError(ValueError):
    """Raised by `distill` when no epoch reaches a finite validation loss."""


@dataclasses.dataclass(frozen=True)
class DistillConfig:
    """Training settings of the reward network."""

    hidden_sizes: tuple[int, ...] = DEFAULT_HIDDEN_SIZES
    learning_rate: float = 3e-3
    weight_decay: float = 1e-4
    batch_size: int = 256
    max_epochs: int = 300
    # Epochs without a lower validation loss before training stops.
    patience: int = 30
    validation_fraction: float = 0.2
    seed: int = 0

    def __post_init__(self):
        object.__setattr__(self, "hidden_sizes", validate_hidden_sizes(self.hidden_sizes))
        if not (
            isinstance(self.learning_rate, int | float)
            and math.isfinite(self.learning_rate)
            and self.learning_rate > 0
        ):
            raise ValueError(
                f"learning_rate must be a finite number > 0, got {self.learning_rate!r}"
            )
        # Counts are used as array sizes and range bounds, so a float such as 2.5 fails late
        # inside jit or range() without naming the field.
        for name in ("batch_size", "max_epochs", "patience"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        seed_valid = isinstance(self.seed, int) and not isinstance(self.seed, bool)
        if not (seed_valid and 0 <= self.seed <= SEED_MAX):
            raise ValueError(f"seed must be an integer in [0, {SEED_MAX}], got {self.seed!r}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        if not 0.0 < self.validation_fraction < 1.0:
            raise ValueError(
                f"validation_fraction must be in (0, 1), got {self.validation_fraction!r}"
            )


@dataclasses.dataclass(frozen=True)
class DistillResult:
    """The trained network and how it did."""

    model: RewardNetQoE
    params: dict[str, Any]
    metrics: dict[str, float]  # validation metrics of the best epoch, see `evaluate`
    best_epoch: int
    num_epochs: int  # epochs run, including those after the best one
    history: tuple[dict[str, float], ...]  # per epoch: train_loss, validation_loss


@dataclasses.dataclass(frozen=True)
class _Split:
    """One part of the dataset: network inputs [n, 7], ratings [n], and the raw traits, quality
    and latency they came from."""

    inputs: np.ndarray
    ratings: np.ndarray
    traits: np.ndarray
    quality: np.ndarray
    latency_s: np.ndarray


def _split_dataset(dataset: RatingsDataset, config: DistillConfig) -> tuple[_Split, _Split]:
    num_ratings = dataset.num_ratings
    num_validation = max(1, round(config.validation_fraction * num_ratings))
    num_train = num_ratings - num_validation
    if num_train < 1:
        raise ValueError(f"dataset {dataset.path} has {num_ratings} ratings: too few to split")
    order = np.asarray(jax.random.permutation(jax.random.key(config.seed), num_ratings))
    inputs = np.asarray(reward_net_inputs(dataset.traits, dataset.quality, dataset.latency_s))

    def take(indices) -> _Split:
        return _Split(
            inputs=inputs[indices],
            ratings=dataset.ratings[indices],
            traits=dataset.traits[indices],
            quality=dataset.quality[indices],
            latency_s=dataset.latency_s[indices],
        )

    return take(order[:num_train]), take(order[num_train:])


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman rank correlation with ties given their average rank; NaN for constant input."""
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(scipy.stats.spearmanr(x, y).statistic)


def evaluate(
    model: RewardNetQoE,
    params: dict[str, Any],
    traits: np.ndarray,
    quality: np.ndarray,
    latency_s: np.ndarray,
    ratings: np.ndarray,
    simulated: bool,
) -> dict[str, float]:
    """Compare predictions with ratings; for simulated ratings also with the noise-free MOS.

    Returns mae, rmse and spearman against the ratings, and with `simulated` also
    mos_mae, mos_rmse and mos_spearman against `simulator.simulated_mos`.
    """
    predicted = np.asarray(model(params, traits, quality, latency_s), dtype=np.float64)
    error = predicted - ratings
    metrics = {
        "num_ratings": int(ratings.size),
        "mae": float(np.mean(np.abs(error))),
        "rmse": float(np.sqrt(np.mean(error**2))),
        "spearman": spearman(predicted, ratings),
    }
    if simulated:
        mos = np.asarray(simulated_mos(traits, quality, latency_s), dtype=np.float64)
        mos_error = predicted - mos
        metrics["mos_mae"] = float(np.mean(np.abs(mos_error)))
        metrics["mos_rmse"] = float(np.sqrt(np.mean(mos_error**2)))
        metrics["mos_spearman"] = spearman(predicted, mos)
    return metrics


@functools.lru_cache(maxsize=8)
def _make_train_functions(
    hidden_sizes: tuple[int, ...], learning_rate: float, weight_decay: float, batch_size: int
):
    """Build the optimizer and the jitted epoch and loss functions, cached so repeated
    distillations with the same settings compile once."""
    model = RewardNetQoE(hidden_sizes=hidden_sizes)
    optimizer = optax.adamw(learning_rate, weight_decay=weight_decay)

    # Only the network is optimised. The normalisation is fixed from the training data and kept
    # out of the optimizer, because AdamW's weight decay would shrink it.
    def loss_fn(network, input_mean, input_std, inputs, ratings):
        normalised = (inputs - input_mean) / input_std
        predicted = model.network.apply({"params": network}, normalised)
        return jnp.mean((predicted - ratings) ** 2)

    @jax.jit
    def train_epoch(network, opt_state, key, input_mean, input_std, inputs, ratings):
        def train_step(carry, batch):
            network, opt_state = carry
            loss, grads = jax.value_and_grad(loss_fn)(network, input_mean, input_std, *batch)
            updates, opt_state = optimizer.update(grads, opt_state, network)
            return (optax.apply_updates(network, updates), opt_state), loss

        num_batches = inputs.shape[0] // batch_size
        order = jax.random.permutation(key, inputs.shape[0])[: num_batches * batch_size]
        batches = (
            inputs[order].reshape(num_batches, batch_size, -1),  # [num_batches, batch, 7]
            ratings[order].reshape(num_batches, batch_size),  # [num_batches, batch]
        )
        (network, opt_state), losses = jax.lax.scan(train_step, (network, opt_state), batches)
        return network, opt_state, jnp.mean(losses)

    return optimizer, train_epoch, jax.jit(loss_fn)


def distill(
    dataset: RatingsDataset,
    config: DistillConfig | None = None,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
) -> DistillResult:
    """Train the reward network on a ratings dataset.

    `on_epoch(epoch, {"train_loss", "validation_loss", "best_validation_loss"})` is called after
    every epoch (for progress display).

    Raises:
        ValueError: the dataset is too small for the split and batch size.
        TrainingDivergedError: no epoch reached a finite validation loss.
    """
    config = config if config is not None else DistillConfig()
    train, validation = _split_dataset(dataset, config)
    batch_size = min(config.batch_size, train.ratings.size)

    model = RewardNetQoE(hidden_sizes=config.hidden_sizes)
    input_mean = train.inputs.mean(axis=0)
    input_std = np.maximum(train.inputs.std(axis=0), MIN_INPUT_STD)
    key_init, key_shuffle = jax.random.split(jax.random.key(config.seed + 1))
    params = model.init_params(key_init, input_mean, input_std)
    optimizer, train_epoch, loss_fn = _make_train_functions(
        config.hidden_sizes, config.learning_rate, config.weight_decay, batch_size
    )
    input_mean, input_std = params["input_mean"], params["input_std"]
    network = params["network"]
    opt_state = optimizer.init(network)

    train_inputs, train_ratings = jnp.asarray(train.inputs), jnp.asarray(train.ratings)
    validation_inputs = jnp.asarray(validation.inputs)
    validation_ratings = jnp.asarray(validation.ratings)
    best_network, best_loss, best_epoch = network, math.inf, 0
    history = []
    for epoch in range(1, config.max_epochs + 1):
        key_epoch = jax.random.fold_in(key_shuffle, epoch)
        network, opt_state, train_loss = train_epoch(
            network, opt_state, key_epoch, input_mean, input_std, train_inputs, train_ratings
        )
        validation_loss = float(
            loss_fn(network, input_mean, input_std, validation_inputs, validation_ratings)
        )
        if validation_loss < best_loss:
            best_network, best_loss, best_epoch = network, validation_loss, epoch
        entry = {"train_loss": float(train_loss), "validation_loss": validation_loss}
        history.append(entry)
        if on_epoch is not None:
            on_epoch(epoch, {**entry, "best_validation_loss": best_loss})
        if epoch - best_epoch >= config.patience:
            break

    # NaN or infinite losses never compare below math.inf, so best_epoch stays 0 and
    # best_network would be the untrained initialisation.
    if best_epoch == 0:
        last = history[-1]
        raise TrainingDivergedError(
            f"training diverged: no finite validation loss in {len(history)} epochs (last "
            f"train loss {last['train_loss']}, validation loss {last['validation_loss']}, "
            f"learning rate {config.learning_rate:g}); try a lower learning rate"
        )

    best_params = {**params, "network": best_network}
    metrics = evaluate(
        model,
        best_params,
        validation.traits,
        validation.quality,
        validation.latency_s,
        validation.ratings,
        simulated=dataset.all_simulated,
    )
    return DistillResult(
        model=model,
        params=best_params,
        metrics=metrics,
        best_epoch=best_epoch,
        num_epochs=len(history),
        history=tuple(history),
    )
