"""Measurements taken on the live training run: first-order statistics and numerical checks."""
