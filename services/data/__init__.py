"""Synthetic data for the built-in tasks: CT phantoms, app screenshots, messages."""
