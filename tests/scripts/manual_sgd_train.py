"""word_language_model's update without torch.optim: clip, then ``p.data.add_(p.grad, alpha=-lr)``.

``--hot-lr X`` gives the decoder its own, larger rate through a second hand-written update.
"""

import argparse

import torch
from torch import nn

parser = argparse.ArgumentParser()
parser.add_argument("--steps", type=int, default=30)
parser.add_argument("--lr", type=float, default=0.5)
parser.add_argument("--hot-lr", type=float, default=None)
parser.add_argument("--accumulate", type=int, default=1)
args = parser.parse_args()

torch.manual_seed(0)


class TinyRNNModel(nn.Module):
    def __init__(self, ntoken: int = 12, nhid: int = 16) -> None:
        super().__init__()
        self.encoder = nn.Embedding(ntoken, nhid)
        self.rnn = nn.LSTM(nhid, nhid)
        self.decoder = nn.Linear(nhid, ntoken)

    def forward(self, data, hidden):
        output, hidden = self.rnn(self.encoder(data), hidden)
        return self.decoder(output).view(-1, self.decoder.out_features), hidden

    def init_hidden(self, bsz):
        return (torch.zeros(1, bsz, 16), torch.zeros(1, bsz, 16))


model = TinyRNNModel()
criterion = nn.CrossEntropyLoss()
source = torch.arange(0, 240).remainder(12).view(-1, 4)  # a periodic sequence: learnable
hidden = model.init_hidden(4)
for step in range(args.steps):
    i = (step * 5) % (source.size(0) - 6)
    model.zero_grad()
    for _ in range(args.accumulate):
        hidden = tuple(h.detach() for h in hidden)
        output, hidden = model(source[i:i + 5], hidden)
        loss = criterion(output, source[i + 1:i + 6].reshape(-1)) / args.accumulate
        loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 0.25 if args.hot_lr is None else 1e9)
    for name, p in model.named_parameters():
        if args.hot_lr is not None and name.startswith("decoder"):
            p.data.add_(p.grad, alpha=-args.hot_lr)
        else:
            p.data.add_(p.grad, alpha=-args.lr)
print("done", float(loss))
