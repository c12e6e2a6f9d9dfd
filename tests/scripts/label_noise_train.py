"""A 6-class task with a clean rule (the class is the argmax of a fixed projection of x); --noise
replaces that share of each batch's labels by random classes (a data-pipeline bug), --smooth
trains on label-smoothed one-hot rows (class-probability targets), --ignore marks a share of the
labels ignore_index, --nll trains log_softmax outputs with nn.NLLLoss (pytorch/examples' form),
--classes sets the number of classes, and --graded draws each label from
the model-free probabilities softmax(4 · x @ rule) instead of their argmax: a task whose labels
are noisy near the class boundaries, where any model is unsure (healthy, not random labels)."""

import torch
import torch.nn.functional as F
from common import parse, save
from torch import nn


def main() -> None:
    args = parse({"--noise": {"type": float, "default": 0.0},
                  "--smooth": {"action": "store_true"},
                  "--ignore": {"type": float, "default": 0.0},
                  "--classes": {"type": int, "default": 6},
                  "--graded": {"action": "store_true"},
                  "--nll": {"action": "store_true"}})
    torch.manual_seed(args.seed)
    classes = args.classes
    rule = torch.randn(8, classes)
    model = nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, classes))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(args.steps):
        x = torch.randn(128, 8)
        y = (x @ rule).argmax(1)
        if args.graded:
            y = torch.multinomial(torch.softmax(4 * x @ rule, 1), 1).squeeze(1)
        flip = torch.rand(128) < args.noise
        y = torch.where(flip, torch.randint(0, classes, (128,)), y)
        z = model(x)
        if args.smooth:
            loss = F.cross_entropy(z, F.one_hot(y, classes).float() * 0.9 + 0.1 / classes)
        else:
            y = torch.where(torch.rand(128) < args.ignore, torch.full_like(y, -100), y)
            loss = (nn.NLLLoss(ignore_index=-100)(F.log_softmax(z, 1), y) if args.nll
                    else nn.CrossEntropyLoss(ignore_index=-100)(z, y))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    save(args.out, losses, model)


if __name__ == "__main__":
    main()
