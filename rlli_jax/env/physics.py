"""Pure formulas of the service model: action mapping, grouping, shared denoising, quality and
the wireless downlink. Every function works on one environment; the caller vmaps.

Shapes use N for the number of users and K for the prompt bank size.
"""

import jax
import jax.numpy as jnp
from flax import struct

from rlli_jax.env.params import EnvParams

# Floor (bit/s) for a user's downlink rate, so a deep fade gives a long but finite latency.
MIN_RATE_BPS = 1.0


@struct.dataclass
class Allocation:
    """The action mapped to physical quantities, each of shape [N]."""

    bandwidth_share: jnp.ndarray  # b_n, sums to 1
    gpu_share: jnp.ndarray  # c_n, sums to 1
    total_steps: jnp.ndarray  # T_n, integer-valued float in [T_min, T_max]
    share_ratio: jnp.ndarray  # rho_n in [0, rho_max]


@struct.dataclass
class Groups:
    """Greedy prompt groups of one slot. Groups are indexed by their representative user."""

    representative: jnp.ndarray  # [N] int32: index of the user's representative
    is_representative: jnp.ndarray  # [N] bool
    similarity: jnp.ndarray  # [N] similarity of the user's prompt to its representative's
    membership: jnp.ndarray  # [N, N] bool: membership[g, n] is True when user n is in group g
    size: jnp.ndarray  # [N] float: size of group g (0 where user g is not a representative)


def sanitize_action(action: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Replace NaN by 0 and clip to [-1, 1]; returns (action, number of invalid entries)."""
    invalid = jnp.isnan(action) | (action < -1.0) | (action > 1.0)
    clean = jnp.clip(jnp.nan_to_num(action, nan=0.0, posinf=1.0, neginf=-1.0), -1.0, 1.0)
    return clean, jnp.sum(invalid).astype(jnp.int32)


def map_action(action: jax.Array, params: EnvParams) -> Allocation:
    """Map an action [4N] in [-1, 1] to an allocation.

    Layout, in blocks of N: bandwidth logits, GPU logits, total steps, share ratios.
    b = softmax(a_b * logit_scale), c = softmax(a_c * logit_scale),
    T = round(T_min + (a_T + 1) / 2 * (T_max - T_min)), rho = (a_rho + 1) / 2 * rho_max.
    """
    bandwidth_logits, gpu_logits, steps_action, share_action = jnp.split(action, 4)
    total_steps = jnp.round(
        params.min_total_steps
        + 0.5 * (steps_action + 1.0) * (params.max_total_steps - params.min_total_steps)
    )
    return Allocation(
        bandwidth_share=jax.nn.softmax(bandwidth_logits * params.logit_scale),
        gpu_share=jax.nn.softmax(gpu_logits * params.logit_scale),
        total_steps=total_steps,
        share_ratio=0.5 * (share_action + 1.0) * params.max_share_ratio,
    )


def group_users(prompt_ids: jax.Array, params: EnvParams) -> Groups:
    """Group users greedily and deterministically by prompt similarity.

    In user order, a user joins the first existing group whose representative's prompt has
    similarity >= group_threshold; otherwise it opens a group as its representative.
    `prompt_ids` has shape [N]; the scan runs over users with a static trip count.
    """
    num_users = prompt_ids.shape[0]
    user_similarity = params.prompt_similarity[prompt_ids[:, None], prompt_ids[None, :]]  # [N, N]
    user_index = jnp.arange(num_users)

    def assign(is_representative, user):
        candidates = is_representative & (user_similarity[user] >= params.group_threshold)
        joins = jnp.any(candidates)
        representative = jnp.where(joins, jnp.argmax(candidates), user)
        is_representative = is_representative.at[user].set(~joins)
        return is_representative, representative

    is_representative, representative = jax.lax.scan(
        assign, jnp.zeros(num_users, dtype=bool), user_index
    )
    membership = representative[None, :] == user_index[:, None]  # [N groups, N users]
    return Groups(
        representative=representative.astype(jnp.int32),
        is_representative=is_representative,
        similarity=user_similarity[user_index, representative],
        membership=membership,
        size=jnp.sum(membership, axis=1).astype(jnp.float32),
    )


def shared_steps(allocation: Allocation, groups: Groups) -> jax.Array:
    """Return S_g = round(mean_{n in g} rho_n * min_{n in g} T_n) per group, shape [N].

    Entries of indices that are not representatives are 0.
    """
    members = groups.membership
    mean_ratio = jnp.sum(members * allocation.share_ratio[None, :], axis=1) / jnp.maximum(
        groups.size, 1.0
    )
    min_steps = jnp.min(jnp.where(members, allocation.total_steps[None, :], jnp.inf), axis=1)
    min_steps = jnp.where(groups.size > 0, min_steps, 0.0)
    return jnp.round(mean_ratio * min_steps)


def compute_latency_s(
    allocation: Allocation, groups: Groups, group_shared_steps: jax.Array, params: EnvParams
) -> jax.Array:
    """L_comp_n = S_g / (c_g F) + (T_n - S_g) / (c_n F), shape [N], in seconds.

    c_g is the group's pooled GPU share: the shared steps run once with the members' shares.
    """
    group_gpu_share = groups.membership.astype(jnp.float32) @ allocation.gpu_share  # [N groups]
    user_shared = group_shared_steps[groups.representative]
    user_group_share = group_gpu_share[groups.representative]
    rate = params.server_steps_per_s
    return user_shared / (user_group_share * rate) + (allocation.total_steps - user_shared) / (
        allocation.gpu_share * rate
    )


def gpu_energy_j(
    allocation: Allocation, groups: Groups, group_shared_steps: jax.Array, params: EnvParams
) -> jax.Array:
    """E_gpu = e_step * (sum_g S_g + sum_n (T_n - S_g(n))), a scalar in joules."""
    user_shared = group_shared_steps[groups.representative]
    num_steps = jnp.sum(group_shared_steps) + jnp.sum(allocation.total_steps - user_shared)
    return params.energy_per_step_j * num_steps


def base_quality(total_steps: jax.Array, params: EnvParams) -> jax.Array:
    """Q(T) = 1 - exp(-T / tau_q)."""
    return 1.0 - jnp.exp(-total_steps / params.quality_tau_steps)


def semantic_fidelity(
    shared: jax.Array, total_steps: jax.Array, similarity: jax.Array, params: EnvParams
) -> jax.Array:
    """Phi = sigmoid(-kappa (S / T - r*(s))), r*(s) = r_lo + (r_hi - r_lo) max(s, 0).

    The caller sets Phi = 1 for representatives, whose own prompt drives the shared steps.
    """
    tolerated_ratio = params.fidelity_ratio_low + (
        params.fidelity_ratio_high - params.fidelity_ratio_low
    ) * jnp.maximum(similarity, 0.0)
    return jax.nn.sigmoid(-params.fidelity_sharpness * (shared / total_steps - tolerated_ratio))


def path_loss_db(distance_m: jax.Array) -> jax.Array:
    """3GPP TR 36.814 urban macro path loss 128.1 + 37.6 log10(d / 1 km), in dB."""
    return 128.1 + 37.6 * jnp.log10(distance_m / 1000.0)


def noise_power_w(params: EnvParams) -> jax.Array:
    """Noise power over the whole band, B * N0 * NF, in watts."""
    noise_psd_w_per_hz = 10.0 ** ((params.noise_psd_dbm_per_hz - 30.0) / 10.0)
    return params.bandwidth_hz * noise_psd_w_per_hz * 10.0 ** (params.noise_figure_db / 10.0)


def channel_gain(distance_m: jax.Array, shadowing_db: jax.Array, fading: jax.Array) -> jax.Array:
    """Linear channel power gain 10^((-PL + X) / 10) * |h|^2; fading is [N, 2] (Re, Im)."""
    fading_power = jnp.sum(fading**2, axis=-1)
    return 10.0 ** ((-path_loss_db(distance_m) + shadowing_db) / 10.0) * fading_power


def snr(gain: jax.Array, params: EnvParams) -> jax.Array:
    """SNR_n = P g_n / (B N0 NF): full power at flat spectral density over the band."""
    return params.tx_power_w * gain / noise_power_w(params)


def snr_db(
    distance_m: jax.Array, shadowing_db: jax.Array, fading: jax.Array, params: EnvParams
) -> jax.Array:
    """Compute 10 log10(SNR_n) as a sum of dB terms, so it stays finite where the linear SNR of
    extreme constants (a 1e-30 W power, a 1e12 m or 1e-9 m distance) leaves the float32 range."""
    noise_db = (
        10.0 * jnp.log10(params.bandwidth_hz)
        + params.noise_psd_dbm_per_hz
        - 30.0
        + params.noise_figure_db
    )
    fading_db = 10.0 * jnp.log10(jnp.sum(fading**2, axis=-1))
    power_db = 10.0 * jnp.log10(params.tx_power_w)
    return power_db - path_loss_db(distance_m) + shadowing_db + fading_db - noise_db


def downlink_rate_bps(
    bandwidth_share: jax.Array, snr_linear: jax.Array, params: EnvParams
) -> jax.Array:
    """OFDMA rate R_n = b_n B log2(1 + SNR_n) in bit/s, floored at MIN_RATE_BPS."""
    rate = bandwidth_share * params.bandwidth_hz * jnp.log2(1.0 + snr_linear)
    return jnp.maximum(rate, MIN_RATE_BPS)


def evolve_fading(key: jax.Array, fading: jax.Array, params: EnvParams) -> jax.Array:
    """Gauss-Markov update h <- rho_f h + sqrt(1 - rho_f^2) w with w ~ CN(0, 1)."""
    innovation = jnp.sqrt(0.5) * jax.random.normal(key, fading.shape)
    rho = params.fading_correlation
    return rho * fading + jnp.sqrt(1.0 - rho**2) * innovation
