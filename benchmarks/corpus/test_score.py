"""The corpus scorer's diagnosis: the first error must name the mutant's cause.

    OMP_NUM_THREADS=1 .venv/bin/python -m pytest benchmarks/corpus/test_score.py -q
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]
from score import DIAGNOSES, Job, _diagnoses  # noqa: E402


def _job(op: str | None, label: str) -> Job:
    return Job("fam", "calibration", 0, op, None, None, label, 10)


@pytest.mark.parametrize(("op", "label", "finding", "expected"), [
    ("lr_global", "run", {"rule": "HF010", "component": None}, True),
    ("lr_global", "run", {"rule": "HF001", "component": "blocks.0.attn"}, False),  # a symptom
    ("no_zero_grad", "run", {"rule": "HF016", "component": None}, True),
    ("label_noise", "run", {"rule": "HF010", "component": None}, False),
    ("lr_up", "blocks.1.attn", {"rule": "HF006", "component": "blocks.1.attn.q_proj"}, True),
    ("lr_up", "blocks.1.attn", {"rule": "HF010", "component": None}, False),
    ("lr_up", "blocks.1.attn", {"rule": "HF006", "component": "blocks.0.attn.q_proj"}, False),
    ("detach", "relu|bn", {"rule": "HF003", "component": "bn"}, True),
    ("lr_up", "fc", None, False),
    (None, "", {"rule": "HF010", "component": None}, False),  # a healthy run has no cause
])
def test_diagnosis_names_the_cause(op, label, finding, expected):
    assert _diagnoses(_job(op, label), finding) is expected


def test_every_run_operator_has_its_diagnoses():
    import mutations

    # probs_into_loss is labelled with the model's head, scored like a module operator
    assert set(mutations.RUN_OPS) - {"probs_into_loss"} == set(DIAGNOSES)
