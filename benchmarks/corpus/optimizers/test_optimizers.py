"""The optimizer sweep's manifests match their models, and every optimizer recipe steps.

    OMP_NUM_THREADS=1 .venv/bin/python -m pytest benchmarks/corpus/optimizers -q
"""

from __future__ import annotations

import importlib.util
import re
import sys
import tomllib
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
MANIFESTS = sorted((HERE / "zoo").glob("opt_*.toml"))


def _load(name: str, path: Path):  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


generate = _load("optimizer_generate_for_tests", HERE / "generate.py")
program = generate.program  # the module generate.py aims and runs


def test_the_sweep_has_families_and_its_split_lists_them_all() -> None:
    split = tomllib.loads((HERE / "zoo" / "split.toml").read_text())
    assert len(MANIFESTS) >= 20
    assert sorted(split["optimizers"]) == [m.stem for m in MANIFESTS]


@pytest.mark.parametrize("manifest", MANIFESTS, ids=lambda p: p.stem)
def test_manifest_names_its_optimizer_and_aims_like_the_architecture_sweep(manifest: Path) -> None:
    data = tomllib.loads(manifest.read_text())
    wrapper = manifest.with_suffix(".py").read_text()
    found = re.search(r'"--model", "([^"]+)", "--optimizer", "([^"]+)", "--lr", "([^"]+)"',
                      wrapper)
    assert found is not None
    model_type, optimizer, lr = found.groups()
    assert optimizer in program.OPTIMIZERS and float(lr) in program.OPTIMIZERS[optimizer][1]
    assert data["family"] == manifest.stem == f"opt_{optimizer}_{model_type.replace('-', '_')}"
    torch.manual_seed(0)
    model = program.arch.AutoModelForSequenceClassification.from_config(
        program.arch.tiny_config(model_type))
    aims = generate.arch_generate.aim(model, program.arch.CLASSES)
    targets = {m["target"] for m in data["mutant"] if "target" in m}
    assert set(aims.values()) == targets | {data["head"]}
    assert len(data["mutant"]) == len(generate.arch_generate.MUTANTS)


@pytest.mark.parametrize("optimizer", sorted(program.OPTIMIZERS))
def test_every_recipe_updates_every_parameter(optimizer: str) -> None:
    """One step of each recipe moves every parameter (Muon's split leaves nothing out)."""
    torch.manual_seed(0)
    model = program.arch.AutoModelForSequenceClassification.from_config(
        program.arch.tiny_config("biogpt"))
    optimizers = program.OPTIMIZERS[optimizer][0](model, program.OPTIMIZERS[optimizer][1][-1])
    owned = [id(p) for o in optimizers for g in o.param_groups for p in g["params"]]
    assert sorted(owned) == sorted(id(p) for p in model.parameters())  # each exactly once
    before = [p.detach().clone() for p in model.parameters()]
    ids, mask, labels = program.arch.make_batch(4, torch.Generator().manual_seed(0))

    def closure() -> torch.Tensor:
        for o in optimizers:
            o.zero_grad()
        loss = F.cross_entropy(model(input_ids=ids, attention_mask=mask).logits, labels)
        loss.backward()
        return loss

    if optimizer == "lbfgs":
        optimizers[0].step(closure)
    else:
        closure()
        for o in optimizers:
            o.step()
    moved = [not torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True)
             if p.grad is not None and bool(p.grad.ne(0).any())]
    assert moved and all(moved)
