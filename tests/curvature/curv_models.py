"""Tiny float64 models (real modules, no mocks) for the curvature tests and benchmark.

Each ``make_*`` returns a ``Case``: the model, a closure computing the loss on a fixed batch, the
params list (unique tensors) and the blocks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hfault.curvature import Block, BlockPart, whole
from hfault.curvature.dense import DenseHessian, dense_hessian


@dataclass
class Case:
    model: nn.Module
    loss_fn: Callable[[], Tensor]
    params: list[Tensor]
    blocks: list[Block]
    inputs: object = None
    targets: object = None
    criterion: Callable[[object, object], Tensor] | None = None


def _named_blocks(model: nn.Module, groups: dict[str, list[str]]) -> tuple[list, list[Block]]:
    names = [n for n, _ in model.named_parameters()]
    params = [p for _, p in model.named_parameters()]
    blocks = [whole(b, *[names.index(n) for n in ns]) for b, ns in groups.items()]
    return params, blocks


# ---------------------------------------------------------------- MLP
class MLP(nn.Module):
    def __init__(self, d_in: int = 4, hidden: int = 6, d_out: int = 3) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, d_out)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(torch.tanh(self.fc1(x)))


def make_mlp(seed: int = 0) -> Case:
    torch.manual_seed(seed)
    model = MLP().double()
    x = torch.randn(8, 4, dtype=torch.float64)
    y = torch.randint(0, 3, (8,))
    params, blocks = _named_blocks(
        model, {"fc1": ["fc1.weight", "fc1.bias"], "fc2": ["fc2.weight", "fc2.bias"]}
    )
    return Case(model, lambda: F.cross_entropy(model(x), y), params, blocks, x, y,
                nn.CrossEntropyLoss())


# ---------------------------------------------------------------- one-layer attention
class SelfAttention(nn.Module):
    """Attention only: softmax(X Wq (X Wk)ᵀ/√d) X Wv; separate q/k/v Linear, no LN, no out-proj."""

    def __init__(self, d: int = 4) -> None:
        super().__init__()
        self.q = nn.Linear(d, d)
        self.k = nn.Linear(d, d)
        self.v = nn.Linear(d, d)
        self.d = d

    def forward(self, x: Tensor) -> Tensor:
        s = self.q(x) @ self.k(x).transpose(-1, -2) / self.d**0.5
        return torch.softmax(s, dim=-1) @ self.v(x)


def make_attention(seed: int = 0, scale: float = 2.0) -> Case:
    torch.manual_seed(seed)
    model = SelfAttention().double()
    x = scale * torch.randn(3, 5, 4, dtype=torch.float64)
    y = torch.randn(3, 5, 4, dtype=torch.float64)
    params, blocks = _named_blocks(model, {
        "q": ["q.weight", "q.bias"], "k": ["k.weight", "k.bias"], "v": ["v.weight", "v.bias"],
    })
    return Case(model, lambda: F.mse_loss(model(x), y), params, blocks, x, y, nn.MSELoss())


# ---------------------------------------------------------------- HAN
class AttnPool(nn.Module):
    """HAN attention pooling: u = tanh(W h + b), a = softmax(u·c), out = Σ a h."""

    def __init__(self, d: int, a: int) -> None:
        super().__init__()
        self.attention = nn.Linear(d, a)
        self.context = nn.Linear(a, 1, bias=False)

    def forward(self, h: Tensor) -> Tensor:
        w = torch.softmax(self.context(torch.tanh(self.attention(h))).squeeze(-1), dim=-1)
        return (w.unsqueeze(-1) * h).sum(-2)


class HAN(nn.Module):
    """Word GRU + word attention pooling, sentence Linear encoder + sentence attention pooling."""

    def __init__(self, vocab: int = 20, emb: int = 4, hid: int = 3, att: int = 3,
                 classes: int = 2) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab, emb)
        self.word_gru = nn.GRU(emb, hid, batch_first=True, bidirectional=True)
        self.word_attn = AttnPool(2 * hid, att)
        self.sent_enc = nn.Linear(2 * hid, 2 * hid)
        self.sent_attn = AttnPool(2 * hid, att)
        self.fc = nn.Linear(2 * hid, classes)

    def forward(self, docs: Tensor) -> Tensor:
        b, s, w = docs.shape
        h, _ = self.word_gru(self.embedding(docs.reshape(b * s, w)))
        sent = self.word_attn(h).reshape(b, s, -1)
        return self.fc(self.sent_attn(torch.tanh(self.sent_enc(sent))))


HAN_GROUPS = {
    "embedding": ["embedding.weight"],
    "word_gru": [
        "word_gru.weight_ih_l0", "word_gru.weight_hh_l0", "word_gru.bias_ih_l0",
        "word_gru.bias_hh_l0", "word_gru.weight_ih_l0_reverse", "word_gru.weight_hh_l0_reverse",
        "word_gru.bias_ih_l0_reverse", "word_gru.bias_hh_l0_reverse",
    ],
    "word_attention": ["word_attn.attention.weight", "word_attn.attention.bias"],
    "word_context": ["word_attn.context.weight"],
    "sent_enc": ["sent_enc.weight", "sent_enc.bias"],
    "sent_attention": ["sent_attn.attention.weight", "sent_attn.attention.bias"],
    "sent_context": ["sent_attn.context.weight"],
    "fc": ["fc.weight", "fc.bias"],
}


def make_han(seed: int = 0, docs: int = 3, sents: int = 3, words: int = 4,
             dtype: torch.dtype = torch.float64, **sizes: int) -> Case:
    torch.manual_seed(seed)
    model = HAN(**sizes).to(dtype)
    with torch.no_grad():  # larger context vectors: less uniform attention, livelier curvature
        model.word_attn.context.weight.mul_(3.0)
        model.sent_attn.context.weight.mul_(3.0)
    x = torch.randint(0, model.embedding.num_embeddings, (docs, sents, words))
    y = torch.randint(0, model.fc.out_features, (docs,))
    params, blocks = _named_blocks(model, HAN_GROUPS)
    return Case(model, lambda: F.cross_entropy(model(x), y), params, blocks, x, y,
                nn.CrossEntropyLoss())


# ---------------------------------------------------------------- DistilBERT
class Logits(nn.Module):
    """Adapter so that ``model(input_ids)`` returns logits (for PyHessian's criterion(out, y))."""

    def __init__(self, hf: nn.Module) -> None:
        super().__init__()
        self.hf = hf

    def forward(self, ids: Tensor) -> Tensor:
        return self.hf(input_ids=ids).logits


def make_distilbert(seed: int = 0, dim: int = 16, heads: int = 2, layers: int = 2,
                    hidden: int = 32, vocab: int = 50, seq: int = 8, batch: int = 4,
                    dtype: torch.dtype = torch.float64) -> Case:
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    torch.manual_seed(seed)
    cfg = DistilBertConfig(
        vocab_size=vocab, dim=dim, n_heads=heads, n_layers=layers, hidden_dim=hidden,
        max_position_embeddings=max(seq, 8), dropout=0.0, attention_dropout=0.0,
        seq_classif_dropout=0.0, num_labels=2,
    )
    hf = DistilBertForSequenceClassification._from_config(cfg, attn_implementation="eager")
    hf = hf.to(dtype).train()
    model = Logits(hf)
    ids = torch.randint(0, vocab, (batch, seq))
    y = torch.randint(0, 2, (batch,))
    names = [n for n, _ in model.named_parameters()]
    params = [p for _, p in model.named_parameters()]
    groups: dict[str, list[int]] = {}
    for i, n in enumerate(names):
        key = n.removeprefix("hf.").rsplit(".", 1)[0]
        key = key.replace("distilbert.transformer.layer.", "L").replace("distilbert.", "")
        groups.setdefault(key, []).append(i)
    blocks = [Block(k, tuple(BlockPart(i) for i in v)) for k, v in groups.items()]
    return Case(model, lambda: F.cross_entropy(model(ids), y), params, blocks, ids, y,
                nn.CrossEntropyLoss())


# ---------------------------------------------------------------- fused MHA
class MHAModel(nn.Module):
    def __init__(self, d: int = 4, heads: int = 2) -> None:
        super().__init__()
        self.mha = nn.MultiheadAttention(d, heads, batch_first=True)
        self.head = nn.Linear(d, 2)

    def forward(self, x: Tensor) -> Tensor:
        out, _ = self.mha(x, x, x, need_weights=True)
        return self.head(out.mean(1))


def make_mha(seed: int = 0, d: int = 4) -> Case:
    torch.manual_seed(seed)
    model = MHAModel(d).double()
    x = 2.0 * torch.randn(3, 5, d, dtype=torch.float64)
    y = torch.randint(0, 2, (3,))
    names = [n for n, _ in model.named_parameters()]
    w, b = names.index("mha.in_proj_weight"), names.index("mha.in_proj_bias")
    params = [p for _, p in model.named_parameters()]
    blocks = [
        Block(role, (BlockPart(w, 0, i * d, (i + 1) * d), BlockPart(b, 0, i * d, (i + 1) * d)))
        for i, role in enumerate(["query", "key", "value"])
    ]
    blocks.append(whole("out_proj", names.index("mha.out_proj.weight"),
                        names.index("mha.out_proj.bias")))
    blocks.append(whole("head", names.index("head.weight"), names.index("head.bias")))
    return Case(model, lambda: F.cross_entropy(model(x), y), params, blocks, x, y,
                nn.CrossEntropyLoss())


def reference(case: Case, blocks: list[Block] | None = None) -> DenseHessian:
    """Dense rows of ``blocks`` (default: all params) on a fresh evaluation of the loss."""
    rows = None
    if blocks is not None:
        rows = sorted({p.index for b in blocks for p in b.parts})
    return dense_hessian(case.loss_fn(), case.params, rows=rows)


def flat_grad(case: Case, block: Block) -> Tensor:
    """``g_b`` computed independently of the operator (plain autograd)."""
    g = torch.autograd.grad(case.loss_fn(), case.params, allow_unused=True)
    return torch.cat([part.view(g[part.index]).reshape(-1) for part in block.parts])


# ---------------------------------------------------------------- 0-dim parameter
class ScaledLogits(nn.Module):
    """A CLIP-style learnable temperature: a 0-dim parameter, alone and inside a block."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)
        self.logit_scale = nn.Parameter(torch.tensor(0.5))

    def forward(self, x: Tensor) -> Tensor:
        return self.logit_scale.exp() * torch.tanh(self.fc(x))


def make_scalar_param(seed: int = 0, mixed: bool = False) -> Case:
    """``mixed``: the 0-dim parameter shares a block with a vector (else it is a block alone)."""
    torch.manual_seed(seed)
    model = ScaledLogits().double()
    x = torch.randn(8, 4, dtype=torch.float64)
    y = torch.randint(0, 3, (8,))
    groups = ({"fc.weight": ["fc.weight"], "bias_and_scale": ["fc.bias", "logit_scale"]} if mixed
              else {"fc": ["fc.weight", "fc.bias"], "logit_scale": ["logit_scale"]})
    params, blocks = _named_blocks(model, groups)
    return Case(model, lambda: F.cross_entropy(model(x), y), params, blocks, x, y,
                nn.CrossEntropyLoss())
