"""Task inference without task ids (METHOD.md §5-6): SupSup one-shot / binary over a K-space
superposition of the learned tasks, the shortlist (Taylor ranking + exact check, flat in T) and exhaustive
searches, and the hill climb that repairs a shortlist's near misses. No Lightning here."""

from impress_lightning.inference.accuracy import InferenceTally, score_inference
from impress_lightning.inference.objectives import (
    entropy_objective, get_objective, get_score, superfluous_objective, superfluous_score,
)
from impress_lightning.inference.strategies import (
    beta_gradient, binary, climb_neighbours, one_shot, uniform_beta, verify,
)
from impress_lightning.inference.superposition import (
    check_task_coeffs, combination_logits_fn, normalize_rows, superpose, superposed_logits_fn,
)
from impress_lightning.inference.task_inference import InferenceResult, TaskInference

__all__ = [
    "InferenceResult", "InferenceTally", "TaskInference", "beta_gradient", "binary", "check_task_coeffs",
    "climb_neighbours", "combination_logits_fn", "entropy_objective", "get_objective", "get_score",
    "normalize_rows", "one_shot", "score_inference", "superfluous_objective", "superfluous_score", "superpose",
    "superposed_logits_fn", "uniform_beta", "verify",
]
