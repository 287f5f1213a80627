"""Runnable jobs behind ``scripts/`` and the ``hf-soft-diamond`` command."""
