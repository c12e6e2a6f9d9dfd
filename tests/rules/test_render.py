"""Message templates: placeholders, and optional segments that a mode did not measure."""

from __future__ import annotations

from hfault.rules import load_rules
from hfault.rules.rule import render


def test_placeholders_are_filled_and_a_missing_value_reads_n_a() -> None:
    assert render("r = {r:.2f}, s = {s}", {"r": 1.234, "s": None}) == "r = 1.23, s = n/a"


def test_an_optional_segment_is_dropped_when_none_of_its_values_was_measured() -> None:
    template = "entropy {e:.2f}{?; ‖H_QQ‖ = {q:.2g} vs ‖H_VV‖ = {v:.2g}?} at step {s}"
    assert render(template, {"e": 0.03, "q": None, "v": None, "s": 200}) == (
        "entropy 0.03 at step 200")
    assert render(template, {"e": 0.03, "q": 0.0088, "v": None, "s": 200}) == (
        "entropy 0.03; ‖H_QQ‖ = 0.0088 vs ‖H_VV‖ = n/a at step 200")


def test_attention_collapse_without_curvature_names_no_hessian_norms() -> None:
    # A first-order run (the default) measures no curvature: HF204's message used to end in
    # "‖H_QQ‖ = n/a, ‖H_KK‖ = n/a vs ‖H_VV‖ = n/a" (seen on Lightning's transformer demo).
    rule = next(r for r in load_rules() if r.id == "HF204")
    text = render(rule.message, {"module": "enc.0.attn", "value": 0.03, "step": 200,
                                 "head_min": 0.03, "q_at": None, "k_at": None, "v_at": None})
    assert text == ("attention in enc.0.attn collapsed: normalized entropy 0.03 at step 200 "
                    "(1 = uniform, 0 = one-hot; lowest head 0.03)")
