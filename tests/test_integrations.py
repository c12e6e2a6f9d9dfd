"""The Trainer and Lightning callbacks: a real fit of a tiny model under each, reported."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from tests.conftest import validate

pytestmark = pytest.mark.e2e


def test_the_trainer_callback_reports_a_tiny_gpt2(tmp_path: Path, one_math_thread: None) -> None:
    # The Trainer needs accelerate (in the test extra since this test; an environment set up
    # before it lacks it until `pip install -e ".[test]"` runs again).
    pytest.importorskip("accelerate", reason="transformers' Trainer needs accelerate")
    from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

    from hfault.integrations import HfaultTrainerCallback

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_positions=16, n_embd=16, n_layer=2,
                                       n_head=2))
    ids = torch.randint(0, 64, (24, 16))
    data = [{"input_ids": x, "labels": x} for x in ids]
    callback = HfaultTrainerCallback(json=tmp_path / "report.json")
    args = TrainingArguments(
        output_dir=str(tmp_path / "out"), max_steps=5, per_device_train_batch_size=4,
        report_to=[], use_cpu=True, save_strategy="no", logging_strategy="no",
        disable_tqdm=True)
    Trainer(model=model, args=args, train_dataset=data, callbacks=[callback]).train()
    report = callback.report
    assert report is not None
    validate(report)
    assert json.loads((tmp_path / "report.json").read_text())["run"]["steps"] == 5
    assert report["run"]["status"] == "completed" and report["run"]["steps"] == 5
    assert [o["class"] for o in report["run"]["optimizers"]] == ["AdamW"]
    names = {c["name"] for c in report["components"]}
    assert {"transformer.h.0.attn.c_attn.query", "transformer.h.1.mlp.c_fc"} <= names, names
    assert len(report["timeline"]["loss"]) == 5


class Classifier:  # built inside the test: importing lightning at collection is slow
    @staticmethod
    def make() -> nn.Module:
        import lightning as L

        class Module(L.LightningModule):
            def __init__(self) -> None:
                super().__init__()
                self.encoder = nn.Linear(6, 12)
                self.head = nn.Linear(12, 3)

            def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
                x, y = batch
                return nn.functional.cross_entropy(self.head(torch.tanh(self.encoder(x))), y)

            def configure_optimizers(self) -> torch.optim.Optimizer:
                return torch.optim.SGD(self.parameters(), lr=0.1)

        return Module()


def _trainer(callback: object, steps: int) -> object:
    import lightning as L

    return L.Trainer(max_steps=steps, logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
                     devices=1, callbacks=[callback])


def _loader() -> torch.utils.data.DataLoader[tuple[torch.Tensor, ...]]:
    x = torch.randn(64, 6)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(
        x, torch.randint(0, 3, (64,))), batch_size=8)


def test_the_lightning_callback_reports_a_fit(tmp_path: Path, one_math_thread: None) -> None:
    from hfault.integrations import HfaultLightningCallback

    torch.manual_seed(0)
    callback = HfaultLightningCallback(json=tmp_path / "report.json")
    _trainer(callback, 6).fit(Classifier.make(), _loader())  # type: ignore[attr-defined]
    report = callback.report
    assert report is not None
    validate(report)
    assert (report["run"]["status"], report["run"]["steps"]) == ("completed", 6)
    assert [c["name"] for c in report["components"]] == ["encoder", "head"]
    assert (tmp_path / "report.json").exists()


def test_a_failed_lightning_fit_still_gets_its_report(tmp_path: Path,
                                                      one_math_thread: None) -> None:
    from hfault.integrations import HfaultLightningCallback

    class Boom(RuntimeError):
        pass

    def fail_at_step_3(*_: object) -> None:
        if trainer.global_step == 3:  # type: ignore[attr-defined]
            raise Boom("the data ran dry")

    torch.manual_seed(0)
    callback = HfaultLightningCallback()
    trainer = _trainer(callback, 6)
    model = Classifier.make()
    model.on_train_batch_start = fail_at_step_3  # type: ignore[method-assign]
    with pytest.raises(Boom):
        trainer.fit(model, _loader())  # type: ignore[attr-defined]
    report = callback.report
    assert report is not None
    assert (report["run"]["status"], report["run"]["steps"]) == ("crashed", 3)
    assert report["run"]["error"]["type"] == "Boom"


def test_a_callback_refuses_max_steps() -> None:
    from hfault.integrations import HfaultLightningCallback

    with pytest.raises(TypeError, match="max_steps"):
        HfaultLightningCallback(max_steps=5)
