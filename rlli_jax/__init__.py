"""rlli_jax: RLLI (reinforcement learning with LLM interaction) for diffusion services in JAX.

Importing the package registers the gymnax ids `DiffusionService-v0` and `WaterFilling-v0`.
"""

import gymnax

from rlli_jax.env.service import DiffusionServiceEnv
from rlli_jax.env.water_filling import WaterFillingEnv

__version__ = "0.1.0"

ENV_IDS = {"DiffusionService-v0": DiffusionServiceEnv, "WaterFilling-v0": WaterFillingEnv}

for _env_id, _env_class in ENV_IDS.items():
    if _env_id not in gymnax.registered_envs:
        gymnax.register(_env_id, _env_class)

__all__ = ["ENV_IDS", "DiffusionServiceEnv", "WaterFillingEnv", "__version__"]
