"""transformers DistilBERT for sequence classification, from a small config (random init)."""

import torch
from common import parse, save
from transformers import DistilBertConfig, DistilBertForSequenceClassification


def main() -> None:
    args = parse()
    torch.manual_seed(args.seed)
    config = DistilBertConfig(
        vocab_size=100, dim=32, n_layers=2, n_heads=2, hidden_dim=64, max_position_embeddings=16,
        num_labels=2,
    )
    model = DistilBertForSequenceClassification(config)
    opt = torch.optim.AdamW(model.parameters(), lr=5e-4)
    losses = []
    for _ in range(args.steps):
        ids = torch.randint(0, 100, (8, 12))
        labels = (ids[:, 0] > 50).long()
        out = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(out.loss.item())
    save(args.out, losses, model)


if __name__ == "__main__":
    main()
