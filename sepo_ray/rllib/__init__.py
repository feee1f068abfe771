"""SEPO on Ray RLlib's new API stack: ``from sepo_ray.rllib import SEPO, SEPOConfig``."""

from sepo_ray.rllib.algorithm import SEPO, SEPO_FIELDS, SEPOConfig

__all__ = ["SEPO", "SEPOConfig", "SEPO_FIELDS"]
