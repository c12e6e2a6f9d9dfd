"""Runs a model forward and backward but never creates an optimizer."""

import torch
from torch import nn

model = nn.Linear(3, 1)
model(torch.randn(4, 3)).sum().backward()
print("done")
