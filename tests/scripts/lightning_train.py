"""A tiny LightningModule fitted by Lightning's own loop: automatic optimization calls
``optimizer.step(closure)``, with ``zero_grad``, forward and backward inside the closure.
``--forever`` trains until interrupted, printing each step; ``--out`` also saves the gradient
norms the optimizer applied at each step (read in ``on_before_optimizer_step``)."""

import lightning as L
import torch
from common import parse, save
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


class Classifier(L.LightningModule):
    def __init__(self, forever: bool) -> None:
        super().__init__()
        self.encoder = nn.Linear(6, 12)
        self.act = nn.Tanh()
        self.head = nn.Linear(12, 3)
        self.forever = forever
        self.losses: list[float] = []
        self.grad_norms: list[dict[str, float]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.act(self.encoder(x)))

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.losses.append(loss.item())
        return loss

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        self.grad_norms.append({
            name: float(torch.cat([p.grad.flatten() for p in module.parameters()]).norm())
            for name, module in (("encoder", self.encoder), ("head", self.head))
        })

    def on_train_batch_end(self, outputs: object, batch: object, batch_idx: int) -> None:
        if self.forever:
            print(f"step {self.global_step}", flush=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)


def main() -> None:
    args = parse({"--forever": {"action": "store_true"}})
    torch.manual_seed(args.seed)
    model = Classifier(args.forever)
    x = torch.randn(64, 6)
    y = torch.randint(0, 3, (64,))
    loader = DataLoader(TensorDataset(x, y), batch_size=8, shuffle=True)
    trainer = L.Trainer(
        max_steps=-1 if args.forever else args.steps, max_epochs=-1 if args.forever else None,
        logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, accelerator="cpu", devices=1,
    )
    trainer.fit(model, loader)
    save(args.out, model.losses, model, grad_norms=model.grad_norms)


if __name__ == "__main__":
    main()
