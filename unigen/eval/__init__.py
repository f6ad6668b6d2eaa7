"""Evaluation for the digits job: classifier, Fréchet distance, memorisation, yardsticks."""

from unigen.eval.baselines import baselines, gmm_samples, memoriser_samples
from unigen.eval.classifier import DigitsClassifier, classify
from unigen.eval.frechet import frechet_distance, frechet_distance_features, gaussian_stats
from unigen.eval.metrics import evaluate_samples, nearest_distances, reference
from unigen.eval.probe import linear_probe, raw_pixel_baseline
from unigen.eval.protocol import N_SAMPLES, SEEDS, eval_labels, to_eval_space
from unigen.eval.report import format_report, report

__all__ = [
    "baselines", "gmm_samples", "memoriser_samples", "DigitsClassifier", "classify",
    "frechet_distance", "frechet_distance_features", "gaussian_stats", "evaluate_samples",
    "nearest_distances", "reference", "N_SAMPLES", "SEEDS", "eval_labels", "to_eval_space",
    "format_report", "report", "linear_probe", "raw_pixel_baseline",
]
