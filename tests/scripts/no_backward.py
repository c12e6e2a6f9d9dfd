"""Creates an optimizer but never calls backward (an evaluation script)."""

import torch
from torch import nn

model = nn.Linear(3, 1)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
with torch.no_grad():
    print(model(torch.randn(4, 3)).sum().item())
