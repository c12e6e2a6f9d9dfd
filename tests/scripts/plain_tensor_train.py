"""A two-layer regression in plain tensors, updated by hand (no nn.Module, no torch.optim).

``--state`` keeps the output layer on a plain object (``state.W2``); ``--log-loss`` trains a
classifier whose loss takes ``torch.log(p)`` of a sigmoid that saturates to 0 (a non-finite loss
made outside any module); ``--skip-bad`` leaves out the update of a step whose loss is not
finite, as careful numerical code does.
"""

import argparse

import torch

parser = argparse.ArgumentParser()
parser.add_argument("--steps", type=int, default=20)
parser.add_argument("--log-loss", action="store_true")
parser.add_argument("--skip-bad", action="store_true")
args = parser.parse_args()

torch.manual_seed(0)


class State:
    pass


x = torch.randn(32, 4)
y = (x[:, :1] > 0).float() if args.log_loss else x @ torch.randn(4, 1)
W1 = (torch.randn(4, 8) / 2).requires_grad_()
b1 = torch.zeros(8, requires_grad=True)
state = State()
state.W2 = (torch.randn(8, 1) / 3).requires_grad_()
lr = 0.05
for step in range(args.steps):
    h = torch.tanh(x @ W1 + b1)
    z = h @ state.W2
    if args.log_loss:
        z = z * (1.0 + 40.0 * step)  # sharper every step: the sigmoid reaches exactly 0
        p = torch.sigmoid(z)
        loss = -(y * torch.log(p) + (1 - y) * torch.log(1 - p)).mean()
    else:
        loss = ((z - y) ** 2).mean()
    loss.backward()
    with torch.no_grad():
        if not args.skip_bad or torch.isfinite(loss):
            for t in (W1, b1, state.W2):
                t -= lr * t.grad
        for t in (W1, b1, state.W2):
            t.grad.zero_()
print("done", loss.item())
