"""Attention probes: entropy and max logit of the weights each attention module computes,
against values computed by hand from the script's initial weights and batch."""

from __future__ import annotations

import importlib.util
import math
import sys

import pytest
import torch

from tests.conftest import SCRIPTS


def _load(name: str):
    sys.path.insert(0, str(SCRIPTS))
    try:
        spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(SCRIPTS))


def _entropy(p: torch.Tensor) -> torch.Tensor:
    return -(p * p.clamp_min(1e-30).log()).sum(-1)


def test_softmax_attention_entropy_and_logit(cli):
    model, x, _ = _load("exact_train").build()
    attn = model.attn
    with torch.no_grad():
        logits = attn.q_proj(x) @ attn.k_proj(x).transpose(-2, -1) / math.sqrt(4)
        entropy = _entropy(logits.softmax(-1))
    result = cli("diagnose", str(SCRIPTS / "exact_train.py"), "--at", "1", "--no-curvature",
                 "--", "--steps", "2")
    stats = result.report["snapshots"][0]["attention"]["attn"]
    assert stats["entropy_mean"] == pytest.approx(float(entropy.mean()), rel=1e-9)
    assert stats["entropy_norm_mean"] == pytest.approx(float(entropy.mean()) / math.log(5),
                                                       rel=1e-9)
    assert stats["max_logit"] == pytest.approx(float(logits.max()), rel=1e-9)
    assert stats["heads"] == 1 and stats["keys"] == 5
    assert stats["mask_offset"] is None  # unmasked


def test_sdpa_causal_attention_per_head(cli):
    model, x, _ = _load("sdpa_train").build()
    attn = model.attn
    with torch.no_grad():
        q, k, _v = attn.qkv(x).view(4, 6, 3, 2, 4).permute(2, 0, 3, 1, 4)
        logits = q @ k.transpose(-2, -1) / 2.0
        logits = logits.masked_fill(~torch.ones(6, 6, dtype=torch.bool).tril(), -math.inf)
        norm = _entropy(logits.softmax(-1)) / math.log(6)  # (batch, heads, queries)
    result = cli("diagnose", str(SCRIPTS / "sdpa_train.py"), "--at", "1", "--", "--steps", "2")
    assert result.returncode == 0, result.stderr
    snap = result.report["snapshots"][0]
    stats = snap["attention"]["attn"]
    assert stats["heads"] == 2
    assert stats["entropy_norm_mean"] == pytest.approx(float(norm.mean()), rel=1e-5)
    assert stats["entropy_norm_head_min"] == pytest.approx(
        float(norm.mean(dim=(0, 2)).min()), rel=1e-5
    )
    finite = logits[torch.isfinite(logits)]
    assert stats["max_logit"] == pytest.approx(float(finite.max()), rel=1e-5)
    assert stats["mask_offset"] == 0  # is_causal=True: the causal mask itself
    # curvature still measured on the same step (math SDPA kernel forced)
    assert snap["curvature"]["error"] is None and snap["curvature"]["hvps"] > 0


def test_multihead_attention_fused_path_is_probed(cli):
    result = cli("diagnose", str(SCRIPTS / "sdpa_train.py"), "--at", "1", "--",
                 "--steps", "2", "--mha")
    snap = result.report["snapshots"][0]
    stats = snap["attention"]["attn"]
    assert stats["heads"] == 2 and stats["keys"] == 6
    assert 0 < stats["entropy_norm_mean"] <= 1
    assert snap["curvature"]["error"] is None


def test_distilbert_attention_modules_are_named_like_their_components(cli):
    result = cli("diagnose", str(SCRIPTS / "distilbert_train.py"), "--at", "2", "--",
                 "--steps", "2")
    assert result.returncode == 0, result.stderr
    snap = result.report["snapshots"][0]
    assert snap["step"] == 2
    assert set(snap["attention"]) == {
        f"distilbert.transformer.layer.{i}.attention" for i in (0, 1)
    }
    for stats in snap["attention"].values():
        assert stats["heads"] == 2 and 0 < stats["entropy_norm_mean"] <= 1
        assert stats["mask_offset"] is None  # a padding mask (finfo.min) is not causal-shaped
    assert snap["curvature"]["error"] is None


def _masked(keep: torch.Tensor, fill: float = -math.inf) -> torch.Tensor:
    scores = torch.randn(3, 2, *keep.shape, generator=torch.Generator().manual_seed(0))
    return scores.masked_fill(~keep, fill)


def _ahead(t: int) -> torch.Tensor:
    i = torch.arange(t)
    return i[None, :] - i[:, None]


@pytest.mark.parametrize(
    ("name", "scores", "expected"),
    [
        ("no mask", torch.randn(3, 2, 6, 6), None),
        ("causal", _masked(torch.ones(6, 6, dtype=torch.bool).tril()), 0),
        ("tril diagonal=1", _masked(torch.ones(6, 6, dtype=torch.bool).tril(1)), 1),
        ("tril diagonal=2", _masked(torch.ones(6, 6, dtype=torch.bool).tril(2)), 2),
        ("finfo.min fill", _masked(torch.ones(6, 6, dtype=torch.bool).tril(1),
                                   torch.finfo(torch.float32).min), 1),
        ("additive -1e4", torch.randn(2, 6, 6) + (_ahead(6) > 1) * -1e4, 1),
        ("2-D pooling scores", _masked(torch.ones(6, 6, dtype=torch.bool).tril())[0, 0], None),
        ("padding", _masked(torch.ones(6, 6, dtype=torch.bool).index_fill(1, torch.tensor([4, 5]),
                                                                          False)), None),
        ("sliding window", _masked(_ahead(6).abs() <= 1), None),
        ("differs across the batch", torch.cat([
            _masked(torch.ones(6, 6, dtype=torch.bool).tril()),
            _masked(torch.ones(6, 6, dtype=torch.bool).tril(1))]), None),
        ("not square (cached keys)", _masked(torch.ones(6, 8, dtype=torch.bool).tril(2)), None),
    ],
)
def test_causal_mask_offset_reads_the_mask_from_the_scores(name, scores, expected):
    from hfault.probes.attention import causal_mask_offset

    assert causal_mask_offset(scores) == expected, name
