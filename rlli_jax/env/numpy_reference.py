"""A NumPy reference of `DiffusionServiceEnv`, written the way a gym / PyTorch user would.

One environment object with its own `np.random.Generator`, Python loops over users and groups,
and a Python loop over environments to batch. It exists for two reasons: a test checks that it
computes the same rewards as the JAX environment on the same state and action, and
`scripts/benchmark.py` times both in one run so the report gives a speed ratio.

`step` builds no observation and returns four `info` fields, where the JAX step builds the
observation and thirteen. The benchmark's JAX rollout uses only the rewards, so XLA removes
that observation and those fields from the compiled program, and they do not lower the
speed ratio.

Only the QoE models shipped with the package are supported: the analytic simulator and the
persona reward network (an MLP evaluated here in NumPy from the same parameters).
"""

import dataclasses
import math

import numpy as np

from rlli_jax.env.params import EnvParams


@dataclasses.dataclass
class NumpyEnvState:
    """Evolving data of one environment, as NumPy arrays (same fields as `EnvState`)."""

    time: int
    distance_m: np.ndarray
    shadowing_db: np.ndarray
    fading: np.ndarray
    traits: np.ndarray
    prompt_ids: np.ndarray
    energy_used_j: float


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _softmax(x):
    z = np.exp(x - np.max(x))
    return z / np.sum(z)


def numpy_simulated_mos(traits, quality, latency_s):
    """NumPy copy of `rlli_jax.qoe.simulator.simulated_mos` for one user."""
    openness, conscientiousness, extraversion, agreeableness, neuroticism = traits
    quality_expected = 0.65 + 0.3 * openness
    latency_normal_s = 2.0 + 8.0 * (1.0 - neuroticism) * (0.5 + 0.5 * agreeableness)
    quality_weight = 5.0 + 7.0 * openness
    latency_weight = 1.0 + 2.0 * neuroticism + 0.5 * conscientiousness
    score = quality_weight * (quality - quality_expected) - latency_weight * math.log(
        max(latency_s, 1e-6) / latency_normal_s
    )
    mos = 1.0 + 4.0 * _sigmoid(score) + 0.3 * (extraversion - 0.5)
    return float(np.clip(mos, 1.0, 5.0))


class NumpyRewardNet:
    """The persona reward network (SiLU MLP, scaled sigmoid output) in NumPy."""

    def __init__(self, qoe_params):
        network = qoe_params["network"]
        layer_names = sorted(network, key=lambda name: int(name.split("_")[-1]))
        self.layers = [
            (np.asarray(network[name]["kernel"]), np.asarray(network[name]["bias"]))
            for name in layer_names
        ]
        self.input_mean = np.asarray(qoe_params["input_mean"])
        self.input_std = np.asarray(qoe_params["input_std"])

    def __call__(self, traits, quality, latency_s):
        inputs = np.concatenate([traits, [quality, math.log(max(latency_s, 1e-6))]])
        hidden = (inputs - self.input_mean) / self.input_std
        for kernel, bias in self.layers[:-1]:
            hidden = hidden @ kernel + bias
            hidden = hidden * _sigmoid(hidden)
        kernel, bias = self.layers[-1]
        return float(1.0 + 4.0 * _sigmoid((hidden @ kernel + bias)[0]))


class NumpyDiffusionServiceEnv:
    """Single-environment NumPy version of `DiffusionServiceEnv` (gym-style reset / step)."""

    def __init__(self, num_users, horizon, params: EnvParams, qoe_name: str, seed: int = 0):
        self.num_users = num_users
        self.horizon = horizon
        self.p = {
            field.name: np.asarray(getattr(params, field.name))
            for field in dataclasses.fields(params)
            if field.name != "qoe_params"
        }
        self.similarity = self.p["prompt_similarity"].astype(np.float64)
        self.topics = self.p["prompt_topics"]
        if qoe_name == "simulator":
            self.qoe = numpy_simulated_mos
        elif qoe_name == "reward_net":
            self.qoe = NumpyRewardNet(params.qoe_params)
        else:
            raise ValueError(f"unsupported QoE model {qoe_name!r}: use simulator or reward_net")
        self.rng = np.random.default_rng(seed)
        self.state: NumpyEnvState | None = None

    def _param(self, name) -> float:
        return float(self.p[name])

    def prompt_probabilities(self) -> np.ndarray:
        """Return the probability [K] of each prompt: Zipf-skewed topics (ranked by topic id),
        then Zipf-skewed prompts within the topic (ranked in bank order)."""
        num_topics = int(self.topics.max()) + 1
        topic_weight = (np.arange(num_topics) + 1.0) ** -self._param("topic_zipf_exponent")
        rank_in_topic = np.zeros(len(self.topics))
        seen = np.zeros(num_topics, dtype=int)
        for index, topic in enumerate(self.topics):
            rank_in_topic[index] = seen[topic]
            seen[topic] += 1
        prompt_weight = (rank_in_topic + 1.0) ** -self._param("prompt_zipf_exponent")
        topic_total = np.bincount(self.topics, weights=prompt_weight, minlength=num_topics)
        weights = topic_weight[self.topics] * prompt_weight / topic_total[self.topics]
        return weights / weights.sum()

    def _draw_prompts(self):
        probabilities = self.prompt_probabilities()
        return self.rng.choice(len(probabilities), size=self.num_users, p=probabilities)

    def reset(self):
        n = self.num_users
        self.state = NumpyEnvState(
            time=0,
            distance_m=self.rng.uniform(
                self._param("min_distance_m"), self._param("max_distance_m"), n
            ),
            shadowing_db=self._param("shadowing_std_db") * self.rng.standard_normal(n),
            fading=math.sqrt(0.5) * self.rng.standard_normal((n, 2)),
            traits=self.rng.uniform(0.0, 1.0, (n, 5)),
            prompt_ids=self._draw_prompts(),
            energy_used_j=0.0,
        )
        return self.state

    def group(self, prompt_ids):
        """Greedy grouping; returns (representative per user, similarity to it)."""
        representatives = []
        representative_of = []
        similarity_to = []
        for user in range(self.num_users):
            chosen = user
            for candidate in representatives:
                if self.similarity[prompt_ids[user], prompt_ids[candidate]] >= self._param(
                    "group_threshold"
                ):
                    chosen = candidate
                    break
            if chosen == user:
                representatives.append(user)
            representative_of.append(chosen)
            similarity_to.append(self.similarity[prompt_ids[user], prompt_ids[chosen]])
        return representative_of, similarity_to

    def step(self, action):
        """Advance one slot; returns (reward, info, terminated, truncated)."""
        state = self.state
        n = self.num_users
        action = np.clip(np.nan_to_num(np.asarray(action, np.float64), nan=0.0), -1.0, 1.0)
        scale = self._param("logit_scale")
        bandwidth = _softmax(action[:n] * scale)
        gpu = _softmax(action[n : 2 * n] * scale)
        t_min, t_max = self._param("min_total_steps"), self._param("max_total_steps")
        total_steps = np.round(t_min + 0.5 * (action[2 * n : 3 * n] + 1.0) * (t_max - t_min))
        share_ratio = 0.5 * (action[3 * n :] + 1.0) * self._param("max_share_ratio")

        representative_of, similarity_to = self.group(state.prompt_ids)
        over_budget = state.energy_used_j >= self._param("energy_budget_j")
        shared = {}
        group_gpu = {}
        for group in set(representative_of):
            members = [u for u in range(n) if representative_of[u] == group]
            mean_ratio = sum(share_ratio[u] for u in members) / len(members)
            min_steps = min(total_steps[u] for u in members)
            shared[group] = 0.0 if over_budget else float(np.round(mean_ratio * min_steps))
            group_gpu[group] = sum(gpu[u] for u in members)

        rate = self._param("server_steps_per_s")
        noise_w = (
            self._param("bandwidth_hz")
            * 10.0 ** ((self._param("noise_psd_dbm_per_hz") - 30.0) / 10.0)
            * 10.0 ** (self._param("noise_figure_db") / 10.0)
        )
        r_lo, r_hi = self._param("fidelity_ratio_low"), self._param("fidelity_ratio_high")
        qoe, quality, latency = [], [], []
        transmit_energy = 0.0
        gpu_steps = sum(shared.values())
        for u in range(n):
            group = representative_of[u]
            s_g = shared[group]
            gpu_steps += total_steps[u] - s_g
            compute = s_g / (group_gpu[group] * rate) + (total_steps[u] - s_g) / (gpu[u] * rate)
            if representative_of[u] == u:
                fidelity = 1.0
            else:
                tolerated = r_lo + (r_hi - r_lo) * max(similarity_to[u], 0.0)
                ratio = s_g / total_steps[u]
                fidelity = _sigmoid(-self._param("fidelity_sharpness") * (ratio - tolerated))
            q = (1.0 - math.exp(-total_steps[u] / self._param("quality_tau_steps"))) * fidelity
            path_loss = 128.1 + 37.6 * math.log10(state.distance_m[u] / 1000.0)
            gain = 10.0 ** ((-path_loss + state.shadowing_db[u]) / 10.0) * np.sum(
                state.fading[u] ** 2
            )
            snr = self._param("tx_power_w") * gain / noise_w
            bit_rate = max(bandwidth[u] * self._param("bandwidth_hz") * math.log2(1 + snr), 1.0)
            transmit = self._param("image_bits") / bit_rate
            transmit_energy += self._param("tx_power_w") * bandwidth[u] * transmit
            quality.append(q)
            latency.append(compute + transmit)
            qoe.append(self.qoe(state.traits[u], q, compute + transmit))

        gpu_energy = self._param("energy_per_step_j") * gpu_steps
        energy = (gpu_energy + transmit_energy) * (
            self._param("overbudget_factor") if over_budget else 1.0
        )
        reference = n * t_max * self._param("energy_per_step_j")
        reward = float(np.mean(qoe) - self._param("energy_weight") * energy / reference)

        rho = self._param("fading_correlation")
        state.fading = rho * state.fading + math.sqrt(1 - rho**2) * math.sqrt(
            0.5
        ) * self.rng.standard_normal((n, 2))
        state.prompt_ids = self._draw_prompts()
        state.energy_used_j += energy
        state.time += 1
        truncated = state.time >= self.horizon
        if truncated:
            self.reset()
        info = {
            "qoe": float(np.mean(qoe)),
            "quality": float(np.mean(quality)),
            "latency_s": float(np.mean(latency)),
            "energy_j": energy,
        }
        return reward, info, False, truncated
