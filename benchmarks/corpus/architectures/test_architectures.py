"""The architecture sweep's manifests match the models they were generated from.

    OMP_NUM_THREADS=1 .venv/bin/python -m pytest benchmarks/corpus/architectures -q

Each manifest's targets must be modules of its model (a renamed module in a newer transformers
would make every mutant of the type crash at injection, which the corpus counts as invalid, not
as missed), and ``generate.aim`` must still find the same ones (the manifests are its output).
"""

from __future__ import annotations

import importlib.util
import re
import sys
import tomllib
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
MANIFESTS = sorted((HERE / "zoo").glob("arch_*.toml"))


def _load(name: str, path: Path):  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


generate = _load("arch_generate", HERE / "generate.py")
program = _load("arch_program", HERE / "program.py")


def test_the_sweep_has_types_and_its_split_lists_them_all() -> None:
    split = tomllib.loads((HERE / "zoo" / "split.toml").read_text())
    assert len(MANIFESTS) >= 20
    assert sorted(split["architectures"]) == [m.stem for m in MANIFESTS]
    assert not {m.stem[len("arch_"):].replace("_", "-") for m in MANIFESTS} & {
        t.replace("_", "-") for t in generate.SEEN}


@pytest.mark.parametrize("manifest", MANIFESTS, ids=lambda p: p.stem)
def test_manifest_targets_are_modules_of_its_model(manifest: Path) -> None:
    data = tomllib.loads(manifest.read_text())
    wrapper = manifest.with_suffix(".py").read_text()
    found = re.search(r'"--model", "([^"]+)"', wrapper)
    assert found is not None
    torch.manual_seed(0)
    model = program.AutoModelForSequenceClassification.from_config(
        program.tiny_config(found.group(1)))
    names = {name for name, _ in model.named_modules()}
    targets = {m["target"] for m in data["mutant"] if "target" in m}
    assert targets and targets <= names
    assert data["head"] in names
    aims = generate.aim(model, program.CLASSES)
    assert set(aims.values()) == targets | {data["head"]}
    assert data["healthy_seeds"] == [1] and data["seeds"] == [0]


def test_run_py_reads_the_sweep_with_its_own_split() -> None:
    run = _load("corpus_run_for_sweep", HERE.parent / "run.py")
    families = run.load_families({"arch_opt"}, HERE / "zoo")
    assert [f.split for f in families] == ["architectures"]
    jobs = run.jobs_of(families[0])
    assert sum(j.healthy for j in jobs) == 2 and len(jobs) == 2 + len(families[0].mutants)
