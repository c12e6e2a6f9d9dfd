"""Components without a gradient: unused (HF026, info) against cut while still used (HF003)."""

from __future__ import annotations

import pytest

from tests.conftest import SCRIPTS


@pytest.mark.parametrize(("mode", "component", "reaches", "rule"), [
    ("pooler", "pool.dense", False, "HF026"),  # returned by its sub-model, not read
    ("optional", "segment", False, "HF026"), # a lone parameter no input looks up
    ("data", "gate", True, "HF003"),         # read through .data: used, never trained
    ("nograd", "gate", True, "HF003"),       # computed under torch.no_grad(): used, never trained
    ("written", "gate", True, "HF003"),      # the same, written into another tensor by index
    ("skipped", "gate", False, "HF003"),     # a layer defined and left out of forward: missing
    ("dropped", "gate", False, "HF003"),     # computed, its result dropped in the same forward
])
def test_unused_components_are_told_from_cut_ones(cli, mode: str, component: str,
                                                  reaches: bool, rule: str) -> None:
    done = cli("diagnose", "--no-curvature", str(SCRIPTS / "unused_train.py"), "--fail-on",
               "never", "--", "--steps", "6", "--mode", mode)
    assert done.returncode == 0, done.stderr
    reach = done.report["param_reach"]
    assert reach["found_at"] == 1 and reach["step"] > 1
    followed = reach["components"]
    assert followed["segment"] == {"reaches_loss": False, "read": False, "returned": False,
                                   "called": True, "library": False}
    assert followed[component]["reaches_loss"] is reaches
    # read with gradients enabled (a no_grad block, an EMA update or validation does not count)
    assert followed[component]["read"] is (mode in ("pooler", "data", "dropped"))
    # the pooler's value leaves the sub-model that computed it; the dropped one does not
    assert followed[component]["returned"] is (mode in ("pooler", "data", "nograd", "written"))
    # the script's own model: a layer it never calls was forgotten, not optional
    assert followed[component]["called"] is (mode not in ("skipped", "data"))  # data: F.linear
    assert followed[component]["library"] is False
    found = {(f["rule"], f["severity"]) for f in done.report["findings"]
             if f["component"] == component}
    assert found == {(rule, "error" if rule == "HF003" else "info")}, found


def test_nothing_is_followed_when_every_component_gets_a_gradient(cli) -> None:
    done = cli("diagnose", "--no-curvature", str(SCRIPTS / "basic_train.py"), "--", "--steps",
               "6")
    assert done.returncode == 0, done.stderr
    assert done.report.get("param_reach") is None


def test_a_library_models_layer_never_called_is_unused_by_design(cli) -> None:
    """ESM's contact head (only ``predict_contacts`` calls it) in a classification run: no
    gradient, never called, inside a transformers model: an info, not a dead component."""
    done = cli("diagnose", "--no-curvature", str(SCRIPTS / "esm_train.py"), "--fail-on",
               "never", "--", "--steps", "6")
    assert done.returncode == 0, done.stderr
    followed = done.report["param_reach"]["components"]
    head = followed["esm.contact_head.regression"]
    assert head == {"reaches_loss": False, "read": False, "returned": False, "called": False,
                    "library": True}
    found = {(f["rule"], f["severity"]) for f in done.report["findings"]
             if f["component"] == "esm.contact_head.regression"}
    assert found == {("HF026", "info")}, found
