"""Measurements taken on the live training run, each a listener of the capture session that owns
its state and its report fields; ``registry`` lists those of a diagnosis."""
