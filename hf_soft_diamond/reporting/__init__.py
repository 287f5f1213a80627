"""Figures and model cards built from a run's results (never the reverse)."""
