"""Run a user's training script unmodified, with hooks that observe its training."""
