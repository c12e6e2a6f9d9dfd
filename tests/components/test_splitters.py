"""The splitter registry: docs/components.md's example, precedence over the built-ins, declining,
matching by type / class name / path rule, and the checks that keep a splitter from losing
parameters."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from torch import nn

from hfault.components import (
    build_components,
    fused,
    is_attention_module,
    register_splitter,
    splitters,
    unregister_splitter,
)
from tests.conftest import SCRIPTS

DOC = Path(__file__).resolve().parents[2] / "docs" / "components.md"


@pytest.fixture(autouse=True)
def registry():
    """Every test leaves the process-wide registry as it found it."""
    before = splitters()
    yield
    for s in splitters():
        if s not in before:
            unregister_splitter(s)
    assert splitters() == before


def components(model: nn.Module) -> dict[str, object]:
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    return {c.name: c for c in build_components([opt], [model])}


def parts(component) -> list[str]:
    return component.to_dict()["parameters"]


def doc_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)


def test_doc_example_turns_one_component_into_three():
    model_code = next(b for b in doc_blocks() if "class PackedSelfAttention" in b)
    registration = next(b for b in doc_blocks() if b.startswith("try:"))
    scope: dict[str, object] = {}
    exec(compile(model_code, str(DOC), "exec"), scope)
    model = scope["Classifier"]()
    model(torch.randn(2, 5, 16)).sum().backward()  # the example is a working module

    comps = components(model)
    assert set(comps) == {"mixer", "head"}
    assert comps["mixer"].role == "other" and comps["mixer"].attention is None
    assert not is_attention_module(model.mixer)

    exec(compile(registration, str(DOC), "exec"), {})
    comps = components(model)
    assert list(comps) == ["mixer.query", "mixer.key", "mixer.value", "head"]
    for i, role in enumerate(("query", "key", "value")):
        c = comps[f"mixer.{role}"]
        assert (c.role, c.attention, c.attention_kind) == (role, "mixer", "self")
        assert parts(c) == [f"packed[{16 * i}:{16 * (i + 1)}, :]"]
        assert c.module is model.mixer and c.module_type == "PackedSelfAttention"
        assert c.access == 'list(model.get_submodule("mixer").parameters())'
    assert comps["head"].role == "other" and comps["head"].attention is None
    assert is_attention_module(model.mixer)
    assert splitters()[0].name == "PackedSelfAttention"


def test_cli_reports_the_registered_split_and_probes_the_attention(cli):
    result = cli("diagnose", str(SCRIPTS / "packed_attention_train.py"), "--at", "1", "--",
                 "--steps", "2")
    assert result.returncode == 0, result.stderr
    assert result.names() == ["mixer.query", "mixer.key", "mixer.value", "head"]
    assert result.component("mixer.key")["parameters"] == ["packed[16:32, :]"]
    assert result.component("mixer.value")["attention"] == "mixer"
    assert "mixer" in result.report["snapshots"][0]["attention"]


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Linear(8, 24)
        self.out = nn.Linear(8, 8)


def test_registered_splitter_takes_precedence_over_builtins_until_unregistered():
    block = Block()
    assert [n for n in components(block) if n.startswith("qkv")] == [
        "qkv.query", "qkv.key", "qkv.value"
    ]
    kv = register_splitter(lambda m, path: path.endswith("qkv"), fused(roles=("key", "value")))
    comps = components(block)
    assert [n for n in comps if n.startswith("qkv")] == ["qkv.key", "qkv.value"]
    assert parts(comps["qkv.value"]) == ["weight[12:24, :]", "bias[12:24]"]
    unregister_splitter(kv)
    assert "qkv.query" in components(block)


def test_latest_registration_is_tried_first():
    block = Block()
    register_splitter(nn.Linear, fused(roles=("key", "value")), name="first")
    register_splitter(nn.Linear, fused(roles=("query",)), name="second")
    assert [s.name for s in splitters()[:2]] == ["second", "first"]
    comps = components(block)
    assert comps["qkv.query"].parts[0].stop == 24 and comps["out.query"].role == "query"


def test_declining_splitter_falls_through_to_the_builtins():
    consulted: list[str] = []

    def decline(module: nn.Module, path: str, params) -> None:
        consulted.append(path)
        return None

    register_splitter(nn.Linear, decline)
    comps = components(Block())
    assert consulted == ["qkv", "out"]
    assert set(comps) == {"qkv.query", "qkv.key", "qkv.value", "out"}


def test_fused_declines_sizes_not_divisible_by_the_roles():
    register_splitter("Linear", fused())  # 8 -> 8: 8 rows do not split in three
    comps = components(Block())
    assert set(comps) == {"qkv.query", "qkv.key", "qkv.value", "out"}
    assert comps["qkv.key"].parts[0].stop == 16  # split by fused(), equal to the built-in


class Packed(nn.Module):
    """A fused weight, a key bias kept whole, and a temperature that belongs to no projection."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(6, 2, 3))
        self.bk = nn.Parameter(torch.zeros(2))
        self.temperature = nn.Parameter(torch.ones(()))


class SubPacked(Packed):
    pass


def test_fused_group_dim_whole_and_rest():
    model = nn.Sequential(Packed())
    register_splitter(Packed, fused("w", dim=2, group="in", whole={"bk": "key"}))
    comps = components(model)
    assert list(comps) == ["0.in.query", "0.in.key", "0.in.value", "0"]
    assert parts(comps["0.in.key"]) == ["w[:, :, 1:2]", "bk"]
    assert [(c.role, c.numel) for c in comps.values()] == [
        ("query", 12), ("key", 14), ("value", 12), ("other", 1)
    ]
    assert comps["0.in.query"].parts[0].view(model[0].w).shape == (6, 2, 1)


def test_class_name_matches_the_class_itself_and_type_matches_subclasses():
    model = nn.Sequential(Packed(), SubPacked())
    register_splitter("Packed", fused("w", whole={"bk": "key"}))
    assert set(components(model)) == {"0.query", "0.key", "0.value", "0", "1"}
    register_splitter(Packed, fused("w", whole={"bk": "key"}))
    assert "1.query" in components(model)


def test_a_splitter_must_put_every_parameter_in_a_piece():
    register_splitter(Packed, lambda m, path, params: fused("w")(m, path, params)[:3],
                      name="drops the rest")
    with pytest.raises(ValueError, match="'drops the rest' left bk, temperature of module '0'"):
        components(nn.Sequential(Packed()))


def test_roles_are_checked():
    with pytest.raises(ValueError, match="roles must be some of"):
        fused(roles=("query", "keys"))
    with pytest.raises(ValueError, match="roles must be some of"):
        fused(roles=("key", "key"))
    with pytest.raises(TypeError, match="match must be"):
        register_splitter(3, fused())  # type: ignore[arg-type]
