"""Temporal Fusion Transformer (Lim et al. 2021) quantile forecaster on synthetic store sales.

Each series (one "store") has a static category (6 kinds), 24 observed past steps and 8 future
steps to forecast. Inputs:

* static: the store category (embedding);
* observed past only: sales (the target), a temperature-like AR(1) series that drives sales with a
  lag of two steps, a noisy reading of the demand factor;
* known past and future: day of week (embedding) and a promotion flag.

Sales = category level + a store level unknown to the model (it has to be read off the past
sales) + category-specific weekly profile + promotion uplift + a dip on the day before a
promotion (customers wait for it) + the lagged temperature effect + the demand factor (an AR(1)
process) + noise whose scale depends on the category.

Model (the paper's blocks, small): the past sales normalised by their window's mean and standard
deviation (the forecasts mapped back to sales units); per-variable input embeddings; gated
residual networks (GRN: ELU MLP with an optional static context, a GLU gate, a residual and a
LayerNorm); a static covariate encoder (four GRNs giving the selection, enrichment and LSTM
state contexts); variable selection networks for the past and the future inputs (a softmax over
the variables from a GRN of their flattened embeddings, each variable through its own GRN); an
nn.LSTM encoder started from the static state, an nn.LSTM decoder continuing it; gated skip
connections; static enrichment; interpretable multi-head attention over all 32 positions
(per-head query and key projections, one value projection shared by the heads, the heads' outputs
averaged) with a causal mask; a position-wise GRN; a linear head giving the 0.1 / 0.5 / 0.9
quantiles of the 8 future sales values. Loss: the pinball (quantile) loss averaged over the
quantiles.

Training: torch.optim.RAdam, clip_grad_norm_ 1.0, ReduceLROnPlateau stepped on the validation
loss every 10 steps.
"""

from __future__ import annotations

import argparse
import json
import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

ENC_LEN, DEC_LEN = 24, 8
TOTAL_LEN = ENC_LEN + DEC_LEN
N_CATEGORIES = 6
QUANTILES = (0.1, 0.5, 0.9)
HIDDEN = 32
HEADS = 4
BATCH = 64


class Batch(NamedTuple):
    category: torch.Tensor  # (B,) long
    observed: torch.Tensor  # (B, ENC_LEN, 3) float: sales, temperature, demand reading
    weekday: torch.Tensor  # (B, TOTAL_LEN) long
    promo: torch.Tensor  # (B, TOTAL_LEN, 1) float
    target: torch.Tensor  # (B, DEC_LEN) float


class SalesSimulator:
    """Per-category parameters drawn once per seed; batches drawn from its generator."""

    def __init__(self, gen: torch.Generator) -> None:
        self.gen = gen
        self.level = torch.randn(N_CATEGORIES, generator=gen) * 1.5
        self.weekly = torch.randn(N_CATEGORIES, 7, generator=gen)
        self.uplift = 1.0 + torch.rand(N_CATEGORIES, generator=gen) * 1.5
        self.noise = 0.1 + torch.rand(N_CATEGORIES, generator=gen) * 0.3
        self.temp_effect = torch.randn(N_CATEGORIES, generator=gen) * 0.8

    def sample(self, n: int) -> Batch:
        g = self.gen
        cat = torch.randint(0, N_CATEGORIES, (n,), generator=g)
        store_level = 2.0 * torch.randn(n, 1, generator=g)  # unknown: read it off the past
        start = torch.randint(0, 7, (n, 1), generator=g)
        weekday = (start + torch.arange(TOTAL_LEN + 1)) % 7
        promo = (torch.rand(n, TOTAL_LEN + 1, generator=g) < 0.15).float()

        temp = torch.zeros(n, TOTAL_LEN + 2)
        demand = torch.zeros(n, TOTAL_LEN)
        temp[:, 0] = torch.randn(n, generator=g)
        demand_prev = torch.randn(n, generator=g)
        for t in range(1, TOTAL_LEN + 2):
            temp[:, t] = 0.8 * temp[:, t - 1] + 0.6 * torch.randn(n, generator=g)
        for t in range(TOTAL_LEN):
            demand_prev = 0.9 * demand_prev + 0.3 * torch.randn(n, generator=g)
            demand[:, t] = demand_prev
        temp_lag = temp[:, :TOTAL_LEN]  # temperature two steps earlier drives sales
        temp_now = temp[:, 2:]

        sales = (
            self.level[cat][:, None]
            + store_level
            + self.weekly[cat].gather(1, weekday[:, :TOTAL_LEN])
            + self.uplift[cat][:, None] * promo[:, :TOTAL_LEN]
            - 0.8 * promo[:, 1:]
            + self.temp_effect[cat][:, None] * temp_lag
            + demand
            + self.noise[cat][:, None] * torch.randn(n, TOTAL_LEN, generator=g)
        )
        reading = demand + 0.3 * torch.randn(n, TOTAL_LEN, generator=g)
        observed = torch.stack([sales, temp_now, reading], dim=-1)[:, :ENC_LEN]
        return Batch(
            category=cat,
            observed=observed,
            weekday=weekday[:, :TOTAL_LEN],
            promo=promo[:, :TOTAL_LEN, None],
            target=sales[:, ENC_LEN:],
        )


# ------------------------------------------------------------------ building blocks
class GatedLinearUnit(nn.Module):
    def __init__(self, d_in: int, d_out: int) -> None:
        super().__init__()
        self.fc = nn.Linear(d_in, 2 * d_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.glu(self.fc(x), dim=-1)


class GatedResidualNetwork(nn.Module):
    def __init__(self, d_in: int, d_hidden: int, d_out: int, d_context: int | None = None):
        super().__init__()
        self.skip = nn.Linear(d_in, d_out) if d_in != d_out else None
        self.fc1 = nn.Linear(d_in, d_hidden)
        self.context = nn.Linear(d_context, d_hidden, bias=False) if d_context else None
        self.fc2 = nn.Linear(d_hidden, d_hidden)
        self.gate = GatedLinearUnit(d_hidden, d_out)
        self.norm = nn.LayerNorm(d_out)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        residual = x if self.skip is None else self.skip(x)
        h = self.fc1(x)
        if self.context is not None and context is not None:
            h = h + self.context(context)
        h = self.fc2(F.elu(h))
        return self.norm(self.gate(h) + residual)


class GateAddNorm(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.gate = GatedLinearUnit(d, d)
        self.norm = nn.LayerNorm(d)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.norm(self.gate(x) + skip)


class VariableSelectionNetwork(nn.Module):
    def __init__(self, n_vars: int, d: int) -> None:
        super().__init__()
        self.n_vars = n_vars
        self.flat_grn = GatedResidualNetwork(n_vars * d, d, n_vars, d_context=d)
        self.var_grns = nn.ModuleList(GatedResidualNetwork(d, d, d) for _ in range(n_vars))

    def forward(self, embedded: list[torch.Tensor], context: torch.Tensor):
        # embedded: n_vars tensors (B, T, d); context: (B, d)
        flat = torch.cat(embedded, dim=-1)
        logits = self.flat_grn(flat, context[:, None, :])
        weights = torch.softmax(logits, dim=-1)  # (B, T, n_vars)
        processed = torch.stack([g(e) for g, e in zip(self.var_grns, embedded, strict=True)], -1)
        return (processed * weights[:, :, None, :]).sum(-1), weights


class InterpretableMultiHeadAttention(nn.Module):
    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.d_head = d // heads
        self.q_layers = nn.ModuleList(nn.Linear(d, self.d_head) for _ in range(heads))
        self.k_layers = nn.ModuleList(nn.Linear(d, self.d_head) for _ in range(heads))
        self.v_layer = nn.Linear(d, self.d_head)  # shared by all heads
        self.out = nn.Linear(self.d_head, d)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
        L, S = q.size(1), k.size(1)
        future = torch.triu(torch.ones(L, S, dtype=torch.bool, device=q.device), diagonal=1)
        values = self.v_layer(v)
        outputs, patterns = [], []
        for q_layer, k_layer in zip(self.q_layers, self.k_layers, strict=True):
            scores = q_layer(q) @ k_layer(k).transpose(1, 2) / math.sqrt(self.d_head)
            scores = scores.masked_fill(future, -1e9)
            attn = torch.softmax(scores, dim=-1)
            outputs.append(attn @ values)
            patterns.append(attn)
        head_mean = torch.stack(outputs).mean(0)
        return self.out(head_mean), torch.stack(patterns).mean(0)


# ------------------------------------------------------------------ the model
class TemporalFusionTransformer(nn.Module):
    def __init__(self, d: int = HIDDEN, heads: int = HEADS) -> None:
        super().__init__()
        self.static_embedding = nn.Embedding(N_CATEGORIES, d)
        self.observed_embeddings = nn.ModuleList(nn.Linear(1, d) for _ in range(3))
        self.weekday_embedding = nn.Embedding(7, d)
        self.promo_embedding = nn.Linear(1, d)

        self.static_selection_ctx = GatedResidualNetwork(d, d, d)
        self.static_enrichment_ctx = GatedResidualNetwork(d, d, d)
        self.static_state_h = GatedResidualNetwork(d, d, d)
        self.static_state_c = GatedResidualNetwork(d, d, d)

        self.past_selection = VariableSelectionNetwork(5, d)
        self.future_selection = VariableSelectionNetwork(2, d)
        self.lstm_encoder = nn.LSTM(d, d, batch_first=True)
        self.lstm_decoder = nn.LSTM(d, d, batch_first=True)
        self.post_lstm = GateAddNorm(d)

        self.static_enrichment = GatedResidualNetwork(d, d, d, d_context=d)
        self.attention = InterpretableMultiHeadAttention(d, heads)
        self.post_attention = GateAddNorm(d)
        self.positionwise = GatedResidualNetwork(d, d, d)
        self.pre_output = GateAddNorm(d)
        self.quantile_head = nn.Linear(d, len(QUANTILES))

    def forward(self, b: Batch) -> torch.Tensor:
        static = self.static_embedding(b.category)
        c_select = self.static_selection_ctx(static)
        c_enrich = self.static_enrichment_ctx(static)
        h0 = self.static_state_h(static)[None]
        c0 = self.static_state_c(static)[None]

        # encoder normalisation of the sales: the head forecasts in units of the past window
        sales = b.observed[..., :1]
        center = sales.mean(dim=1, keepdim=True)
        scale = sales.std(dim=1, keepdim=True) + 0.1
        inputs = torch.cat([(sales - center) / scale, b.observed[..., 1:]], dim=-1)

        weekday = self.weekday_embedding(b.weekday)
        promo = self.promo_embedding(b.promo)
        observed = [emb(inputs[..., i : i + 1]) for i, emb in enumerate(self.observed_embeddings)]
        past_inputs = [*observed, weekday[:, :ENC_LEN], promo[:, :ENC_LEN]]
        future_inputs = [weekday[:, ENC_LEN:], promo[:, ENC_LEN:]]
        past, _ = self.past_selection(past_inputs, c_select)
        future, _ = self.future_selection(future_inputs, c_select)

        enc_out, state = self.lstm_encoder(past, (h0, c0))
        dec_out, _ = self.lstm_decoder(future, state)
        selected = torch.cat([past, future], dim=1)
        temporal = self.post_lstm(torch.cat([enc_out, dec_out], dim=1), selected)

        enriched = self.static_enrichment(temporal, c_enrich[:, None, :])
        attended, _ = self.attention(enriched, enriched, enriched)
        x = self.post_attention(attended, enriched)
        x = self.pre_output(self.positionwise(x), temporal)
        quantiles = self.quantile_head(x[:, ENC_LEN:])  # (B, DEC_LEN, n_quantiles)
        return quantiles * scale + center


def pinball_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    q = torch.tensor(QUANTILES, device=pred.device)
    err = target[..., None] - pred
    return torch.maximum(q * err, (q - 1) * err).mean()


def evaluate(model: nn.Module, batch: Batch) -> float:
    model.eval()
    with torch.no_grad():
        loss = pinball_loss(model(batch), batch.target).item()
    model.train()
    return loss


def main() -> None:
    parser = argparse.ArgumentParser(description="TFT quantile forecaster on synthetic sales")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=150)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    sim = SalesSimulator(torch.Generator().manual_seed(31 + args.seed))
    val_batch = sim.sample(512)

    model = TemporalFusionTransformer()
    optimizer = torch.optim.RAdam(model.parameters(), lr=1e-2)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.5, patience=2)

    losses: list[float] = []
    for step in range(args.steps):
        batch = sim.sample(BATCH)
        loss = pinball_loss(model(batch), batch.target)
        optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(loss.item())
        if (step + 1) % 10 == 0:
            val = evaluate(model, val_batch)
            plateau.step(val)
            if (step + 1) % 30 == 0:
                lr = optimizer.param_groups[0]["lr"]
                print(f"step {step + 1:4d} train {loss.item():.4f} val {val:.4f} lr {lr:.1e}")

    val_loss = evaluate(model, val_batch)
    tail = losses[-max(1, len(losses) // 10) :]

    def as_json(x: float) -> float | str:
        return x if math.isfinite(x) else "nan"

    print(f"final validation pinball loss {val_loss:.4f}")
    print(
        "CORPUS_RESULT "
        + json.dumps(
            {
                "first_loss": as_json(losses[0]),
                "train_loss": as_json(sum(tail) / len(tail)),
                "val_loss": as_json(val_loss),
            }
        )
    )


if __name__ == "__main__":
    main()
