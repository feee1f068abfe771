"""Score Entropy Policy Optimization: scores, neighbours, token proposals, SNIS, coefficients, loss,
advantages, value critic, KL, exact toy.

Pure torch/numpy; no Ray.
"""

from .advantages import group_advantages, leave_one_out_advantages, ppo_advantages
from .critic import ValueNet, center_value, critic_advantages, critic_stats, explained_variance, value_loss
from .kl import kl_masked_path, kl_to_reference
from .loss import (
    grpo,
    grpo_coefficients,
    noised_sepo_loss,
    ppo_coefficients,
    ratio,
    sepo_loss,
    trajectory_pg_loss,
)
from .neighbours import (
    neighbour_mask,
    neighbours,
    other_tokens,
    proposal_mask,
    propose_tokens,
    sample_positions,
)
from .scores import ESTIMATORS, log_scores, log_scores_from_site_log_probs, site_log_probs
from .snis import (
    SNISTerms,
    draw_snis_sites,
    log_pi_hat,
    single_sample_log_pi,
    snis_log_pi,
    snis_log_pi_hat,
    snis_terms,
)

__all__ = [
    "ESTIMATORS",
    "SNISTerms",
    "ValueNet",
    "critic_advantages",
    "draw_snis_sites",
    "explained_variance",
    "center_value",
    "critic_stats",
    "group_advantages",
    "grpo",
    "grpo_coefficients",
    "kl_masked_path",
    "kl_to_reference",
    "leave_one_out_advantages",
    "log_pi_hat",
    "log_scores",
    "log_scores_from_site_log_probs",
    "neighbour_mask",
    "neighbours",
    "other_tokens",
    "ppo_advantages",
    "ppo_coefficients",
    "proposal_mask",
    "propose_tokens",
    "ratio",
    "sample_positions",
    "noised_sepo_loss",
    "sepo_loss",
    "trajectory_pg_loss",
    "single_sample_log_pi",
    "site_log_probs",
    "snis_log_pi",
    "snis_log_pi_hat",
    "snis_terms",
    "value_loss",
]
