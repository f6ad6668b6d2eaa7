"""Command-line entry points for inference: `sample` (unigen-sample), `evaluate` (unigen-evaluate)."""
