"""Component discovery: names, roles, fused slices, roots, tied weights, source locations."""

from __future__ import annotations

import inspect

import pytest
import torch
from torch import nn

from hfault.components import build_components, find_roots


def components(model: nn.Module, seen: list[nn.Module] | None = None):
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    return {c.name: c for c in build_components([opt], seen or [model])}


def test_module_list_is_not_a_root_but_its_owner_is():
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layers = nn.ModuleList(nn.Linear(2, 2) for _ in range(2))

    net = Net()
    # ModuleList never runs forward: only its children and the net are "seen"
    assert find_roots([net.layers[0], net, net.layers[1]]) == [net]
    assert set(components(net, [net.layers[0], net])) == {"layers.0", "layers.1"}


def test_data_parallel_wrapper_adds_no_module_prefix():
    # DDP and DataParallel hold the model as `.module`: components keep the model's own names
    # (the torchrun test checks DDP itself, which needs a process group).
    net = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))
    wrapped = nn.DataParallel(net)
    assert find_roots([wrapped, net, net[0], net[2]]) == [net]
    assert set(components(wrapped, [wrapped, net, net[0], net[2]])) == {"0", "2"}


def test_tied_weights_are_one_component_counted_once():
    class LM(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(10, 4)
            self.out = nn.Linear(4, 10, bias=False)
            self.out.weight = self.embed.weight

    comps = components(LM())
    assert set(comps) == {"embed"}
    assert comps["embed"].numel == 40


def test_embedding_subclasses_are_tables_and_maps_are_not():
    # transformers' learned position tables subclass nn.Embedding under their own class names
    class LearnedPositions(nn.Embedding):
        pass

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.tokens = nn.Embedding(10, 4)
            self.positions = LearnedPositions(8, 4)
            self.bag = nn.EmbeddingBag(10, 4)
            self.proj = nn.Linear(4, 4)

    comps = components(Net())
    assert {name: c.table for name, c in comps.items()} == {
        "tokens": True, "positions": True, "bag": True, "proj": False}
    assert comps["positions"].to_dict()["table"] is True
    assert comps["positions"].module_type == "LearnedPositions"


def test_han_style_attention_pooling():
    class WordAttention(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.gru = nn.GRU(4, 4, batch_first=True)
            self.attention = nn.Linear(4, 4)
            self.context_vector = nn.Linear(4, 1, bias=False)

    class HAN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.word_attention = WordAttention()
            self.u = nn.Parameter(torch.zeros(4))
            self.fc = nn.Linear(4, 2)

    comps = components(HAN())
    assert comps["word_attention.attention"].role == "attention-pooling"
    assert comps["word_attention.context_vector"].role == "attention-pooling"
    assert comps["u"].role == "attention-pooling"
    assert comps["word_attention.gru"].role == "other"
    assert comps["fc"].role == "other"
    assert comps["u"].access == '[model.get_parameter("u")]'
    # the Linear is defined by torch; a person edits WordAttention
    assert comps["word_attention.attention"].source["line"] == inspect.getsourcelines(
        WordAttention
    )[1]


def test_hand_written_attention_roles_and_cross_attention_by_use():
    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.self_attn = nn.MultiheadAttention(8, 2, batch_first=True)
            self.mixer = nn.MultiheadAttention(8, 2, batch_first=True)

        def forward(self, x, memory):
            x = self.self_attn(x, x, x)[0]
            return self.mixer(x, memory, memory)[0]

    block = Block()
    seen: list[nn.Module] = []
    handle = nn.modules.module.register_module_forward_pre_hook(
        lambda m, a: seen.append(m) if m not in seen else None
    )
    cross = []
    hook = block.mixer.register_forward_pre_hook(lambda m, a: cross.append(m))
    block(torch.randn(2, 3, 8), torch.randn(2, 5, 8))
    handle.remove()
    hook.remove()
    opt = torch.optim.SGD(block.parameters(), lr=0.1)
    comps = {c.name: c for c in build_components([opt], seen, cross)}
    assert comps["self_attn.in_proj.query"].attention_kind == "self"
    assert comps["mixer.in_proj.key"].attention_kind == "cross"
    assert comps["mixer.out_proj"].role == "output"


transformers = pytest.importorskip("transformers")


def test_gpt2_fused_c_attn_is_sliced_by_columns_with_cross_attention():
    cfg = transformers.GPT2Config(vocab_size=50, n_embd=16, n_layer=1, n_head=2,
                                  add_cross_attention=True, bos_token_id=0, eos_token_id=0)
    comps = components(transformers.GPT2LMHeadModel(cfg))
    q = comps["transformer.h.0.attn.c_attn.query"]
    assert q.role == "query" and q.attention == "transformer.h.0.attn"
    assert [(p.name, p.dim, p.start, p.stop) for p in q.parts] == [
        ("weight", 1, 0, 16), ("bias", 0, 0, 16)
    ]
    assert comps["transformer.h.0.attn.c_attn.value"].parts[0].start == 32
    assert comps["transformer.h.0.attn.c_proj"].role == "output"
    assert comps["transformer.h.0.mlp.c_proj"].role == "other"
    assert comps["transformer.h.0.crossattention.q_attn"].attention_kind == "cross"
    assert comps["transformer.h.0.crossattention.c_attn.key"].role == "key"
    assert comps["transformer.h.0.ln_cross_attn"].role == "other"


def test_bert_projections_belong_to_the_enclosing_attention():
    cfg = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1,
                                  num_attention_heads=2, intermediate_size=32)
    comps = components(transformers.BertForSequenceClassification(cfg))
    base = "bert.encoder.layer.0.attention"
    for name, role in (("self.query", "query"), ("self.key", "key"), ("self.value", "value"),
                       ("output.dense", "output")):
        assert comps[f"{base}.{name}"].role == role
        assert comps[f"{base}.{name}"].attention == base
    assert comps["bert.encoder.layer.0.output.dense"].role == "other"


def test_vit_projections():
    cfg = transformers.ViTConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                 intermediate_size=32, image_size=8, patch_size=4)
    comps = components(transformers.ViTForImageClassification(cfg))
    roles = {c.role for n, c in comps.items() if ".attention." in n}
    assert {"query", "key", "value", "output"} <= roles
    assert comps["vit.embeddings.cls_token"].role == "other"
