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
        q, k = attn.q_proj(x), attn.k_proj(x)
        logits = q @ k.transpose(-2, -1) / math.sqrt(4)
        entropy = _entropy(logits.softmax(-1))
        rms = q.square().mean().sqrt() * k.square().mean().sqrt()
    result = cli("diagnose", str(SCRIPTS / "exact_train.py"), "--at", "1", "--no-curvature",
                 "--", "--steps", "2")
    stats = result.report["snapshots"][0]["attention"]["attn"]
    assert stats["entropy_mean"] == pytest.approx(float(entropy.mean()), rel=1e-9)
    assert stats["entropy_norm_mean"] == pytest.approx(float(entropy.mean()) / math.log(5),
                                                       rel=1e-9)
    assert stats["max_logit"] == pytest.approx(float(logits.max()), rel=1e-9)
    assert stats["heads"] == 1 and stats["keys"] == 5
    assert stats["mask_offset"] is None  # unmasked
    assert stats["masked_share"] == 0.0
    assert stats["logit_std"] == pytest.approx(float(logits.std(-1).mean()), rel=1e-6)
    # the spread per unit of query and key size: the scale the scores were given (here 1/√4
    # after the product), whatever the size of the module's input
    gain = float(logits.std(-1).mean() / (rms * math.sqrt(4)))
    assert stats["logit_gain"] == pytest.approx(gain, rel=1e-5)
    assert stats["qk_rms"] == pytest.approx(math.sqrt(float(rms)), rel=1e-6)  # √(RMS(q)·RMS(k))
    assert stats["softmax_axes"] == [] and stats["axis_fault"] is None


def test_sdpa_causal_attention_per_head(cli):
    model, x, _ = _load("sdpa_train").build()
    attn = model.attn
    with torch.no_grad():
        q, k, _v = attn.qkv(x).view(4, 6, 3, 2, 4).permute(2, 0, 3, 1, 4)
        logits = q @ k.transpose(-2, -1) / 2.0
        logits = logits.masked_fill(~torch.ones(6, 6, dtype=torch.bool).tril(), -math.inf)
        # normalized by the keys each query may see (i + 1 under the causal mask); the first
        # query sees one key, has no choice, and is left out
        open_keys = torch.arange(1, 7, dtype=torch.float64)
        norm = (_entropy(logits.softmax(-1)).double() / open_keys.log())[..., 1:]
    result = cli("diagnose", "--curvature", str(SCRIPTS / "sdpa_train.py"), "--at", "1",
                 "--", "--steps", "2")
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
    assert stats["masked_share"] == pytest.approx(15 / 36)  # the strict upper triangle of 6 × 6
    rows = [logits[..., i, : i + 1] for i in range(1, 6)]  # a row with one key has no spread
    spread = torch.cat([r.std(-1).flatten() for r in rows])
    assert stats["logit_std"] == pytest.approx(float(spread.mean()), rel=1e-5)
    rms = float(q.square().mean().sqrt() * k.square().mean().sqrt())
    assert stats["logit_gain"] == pytest.approx(float(spread.mean()) / (rms * 2.0), rel=1e-5)
    assert stats["qk_rms"] == pytest.approx(math.sqrt(rms), rel=1e-6)
    # curvature still measured on the same step (math SDPA kernel forced)
    assert snap["curvature"]["error"] is None and snap["curvature"]["hvps"] > 0


def test_multihead_attention_fused_path_is_probed(cli):
    result = cli("diagnose", "--curvature", str(SCRIPTS / "sdpa_train.py"), "--at", "1", "--",
                 "--steps", "2", "--mha")
    snap = result.report["snapshots"][0]
    stats = snap["attention"]["attn"]
    assert stats["heads"] == 2 and stats["keys"] == 6
    assert 0 < stats["entropy_norm_mean"] <= 1
    assert snap["curvature"]["error"] is None


def test_distilbert_attention_modules_are_named_like_their_components(cli):
    result = cli("diagnose", "--curvature", str(SCRIPTS / "distilbert_train.py"), "--at", "2", "--",
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


def test_a_healthy_swin_v2_gets_no_error(cli):
    """transformers' Swin V2, as it ships: its per-head logit scale (heads, 1, 1) set to log 10
    is not a weight drawn too large (HF008), its shifted windows' -100 mask does not count as
    spread of the scores (HF208), and windows of 16 tokens in a batch of 16 images are not the
    batch (HF213)."""
    result = cli("diagnose", "--no-curvature", str(SCRIPTS / "swinv2_train.py"), "--fail-on",
                 "never", "--", "--steps", "12")
    assert result.returncode == 0, result.stderr
    found = [(f["rule"], f["severity"], f["component"]) for f in result.report["findings"]
             if f["severity"] != "info"]
    assert found == [], found
    gains = [a["logit_gain"] for a in result.report["snapshots"][0]["attention"].values()]
    assert len(gains) == 4 and max(gains) < 1.5 * min(gains), gains  # shifted and not alike
    mixing = result.report["sample_mixing"]["modules"]
    assert any(m["sizes"] == [64, 16] and m["mixes"] == [False, True] for m in mixing)


def test_an_additive_finite_mask_is_not_spread_of_the_scores() -> None:
    """Swin adds -100 to the keys outside a shifted window's region: the spread of the scores
    is read over the keys above that gap; one key far above the rest is a sharp row, kept."""
    from hfault.probes.attention import below_gap_masked, row_spread, unmasked

    scores = torch.randn(4, 2, 8, 8, generator=torch.Generator().manual_seed(0))
    region = torch.zeros(8, 8)
    region[:, 5:] = -100.0
    masked = scores + region
    live = below_gap_masked(masked, unmasked(masked))
    assert torch.equal(live, (region == 0).expand_as(masked))
    assert row_spread(masked, live)[0] == pytest.approx(row_spread(scores[..., :5])[0], rel=1e-5)
    sharp = scores.clone()
    sharp[..., 0] = 60.0  # one key 60 above the rest: every key stays open
    assert torch.equal(below_gap_masked(sharp, unmasked(sharp)), unmasked(sharp))


def _masked(keep: torch.Tensor, fill: float = -math.inf) -> torch.Tensor:
    scores = torch.randn(3, 2, *keep.shape, generator=torch.Generator().manual_seed(0))
    return scores.masked_fill(~keep, fill)


def _ahead(t: int) -> torch.Tensor:
    i = torch.arange(t)
    return i[None, :] - i[:, None]


def _padded(k: int, lengths: list[int], whole_rows: bool = False,
            shift: bool = False) -> torch.Tensor:
    """(batch, heads, 6, 6) scores: key j hidden from query i when j − i > k, and keys past each
    sample's length hidden from every query (query rows past it too, with ``whole_rows``);
    ``shift``: then every (i, i + 1) unmasked, padded keys included (the corpus's mask_shift)."""
    rows = []
    for n in lengths:
        real = torch.arange(6) < n
        keep = (_ahead(6) <= k) & real[None, :]
        if whole_rows:
            keep &= real[:, None]
        if shift:
            keep |= _ahead(6) == 1
        rows.append(_masked(keep, torch.finfo(torch.float32).min)[0])
    return torch.stack(rows)


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
        ("bidirectional window of 2", _masked(_ahead(6).abs() <= 2), None),
        ("causal sliding window", _masked((_ahead(6) <= 0) & (_ahead(6) >= -2)), 0),
        ("causal sliding window shifted by one", _masked((_ahead(6) <= 1) & (_ahead(6) >= -2)),
         1),
        ("causal and right padding", _padded(0, [6, 4, 5]), 0),
        ("tril diagonal=1 and right padding", _padded(1, [3, 6, 5]), 1),
        ("causal, padded queries masked whole", _padded(0, [4, 6, 2], whole_rows=True), 0),
        ("shifted by one after padding (a leak into the first padded key)",
         _padded(0, [4, 6, 2], shift=True), 1),
        ("padding and a sliding window", torch.stack([
            _masked((_ahead(6).abs() <= 1) & (torch.arange(6) < n)[None, :])[0]
            for n in (6, 4)]), None),
        ("differs across the batch", torch.cat([
            _masked(torch.ones(6, 6, dtype=torch.bool).tril()),
            _masked(torch.ones(6, 6, dtype=torch.bool).tril(1))]), None),
        # a segment after a memory of 2 keys (Transformer-XL): query i's own key is i + 2
        ("causal after a memory", _masked(torch.ones(6, 8, dtype=torch.bool).tril(2)), 0),
        ("after a memory, shifted by one", _masked(torch.ones(6, 8, dtype=torch.bool).tril(3)),
         1),
        ("after a memory, a causal sliding window",
         _masked((_ahead(8)[2:] <= 0) & (_ahead(8)[2:] >= -3)), 0),
        # torch's is_causal on 6 × 8 scores: aligned with the first keys, not a memory's
        ("top-left causal, more keys", _masked(torch.ones(6, 8, dtype=torch.bool).tril()), None),
        ("more queries than keys", _masked(torch.ones(8, 6, dtype=torch.bool).tril()), None),
        ("cross-attention with key padding",
         _masked(torch.ones(6, 8, dtype=torch.bool).index_fill(1, torch.tensor([7]), False)),
         None),
    ],
)
def test_causal_mask_offset_reads_the_mask_from_the_scores(name, scores, expected):
    from hfault.probes.attention import causal_mask_offset

    assert causal_mask_offset(scores) == expected, name


class _Attention(torch.nn.Module):
    """Single-head self-attention whose softmax axis is a constructor argument."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.q_proj = torch.nn.Linear(4, 4)
        self.k_proj = torch.nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scores = self.q_proj(x) @ self.k_proj(x).transpose(-2, -1)
        return scores.softmax(dim=self.dim) @ x


@pytest.mark.parametrize("dim, recorded", [
    (-1, []),
    (-2, [{"shape": [3, 5, 5], "dim": 1, "summed": [2]}]),  # the @ x that follows sums dim 2
    (1, [{"shape": [3, 5, 5], "dim": 1, "summed": [2]}]),
])
def test_probe_records_softmax_over_other_axes(dim, recorded):
    from hfault.components import is_attention_module
    from hfault.probes.attention import AttentionProbe

    torch.manual_seed(0)
    attn = _Attention(dim)
    probe = AttentionProbe(is_attention_module)
    probe.start()
    try:
        attn(torch.randn(3, 5, 4))
    finally:
        probe.stop()
    (stats,) = probe.stats.values()
    assert stats.to_dict()["softmax_axes"] == recorded
    assert (stats.rows > 0) == (dim == -1)  # entropy and logits only from key-axis softmaxes


class _SlotAttention(torch.nn.Module):
    """Slot Attention's step (Locatello et al. 2020): the slots compete for each input, so the
    softmax of the (batch, slots, inputs) scores is over the slots, dim 1."""

    def __init__(self) -> None:
        super().__init__()
        self.q_proj = torch.nn.Linear(4, 4)
        self.k_proj = torch.nn.Linear(4, 4)

    def forward(self, slots: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        scores = torch.einsum("bkd,bnd->bkn", self.q_proj(slots), self.k_proj(x)) / 2.0
        weights = scores.softmax(dim=1)
        weights = weights / weights.sum(-1, keepdim=True)  # a weighted mean over the inputs
        return weights @ x


def test_a_softmax_over_the_slots_is_measured_over_the_slots():
    from hfault.components import is_attention_module
    from hfault.probes.attention import AttentionProbe, axis_fault

    torch.manual_seed(0)
    attn, slots, x = _SlotAttention(), torch.randn(3, 4, 4), torch.randn(3, 7, 4)
    with torch.no_grad():
        scores = torch.einsum("bkd,bnd->bkn", attn.q_proj(slots), attn.k_proj(x)) / 2.0
        entropy = _entropy(scores.softmax(1).transpose(1, 2))  # (batch, inputs), over slots
    probe = AttentionProbe(is_attention_module)
    probe.start()
    try:
        attn(slots, x)
    finally:
        probe.stop()
    stats = probe.stats[id(attn)]
    record = stats.to_dict()
    assert stats.keys == 4 and stats.queries == 7
    mean = float(entropy.double().mean())
    assert record["entropy_mean"] == pytest.approx(mean, rel=1e-9)
    assert record["entropy_norm_mean"] == pytest.approx(mean / math.log(4), rel=1e-9)
    assert record["logit_std"] == pytest.approx(float(scores.std(1).mean()), rel=1e-6)
    (axis,) = record["softmax_axes"]
    assert axis_fault(axis["shape"], axis["dim"], 3, axis["summed"]) is None


@pytest.mark.parametrize(
    "shape, dim, batch, fault",
    [
        ((8, 4, 12, 12), 3, 8, None),  # not called for the last axis, and fine anyway
        ((8, 4, 12, 12), 2, 8, "the queries"),
        ((8, 4, 12, 10), 2, 8, "the queries"),  # cross-attention: 4-D is enough
        ((8, 4, 12, 12), 1, 8, "not the key axis"),
        ((32, 12, 12), 1, 32, "the queries"),  # (batch·heads, T, T)
        ((32, 12, 1), 1, 32, None),  # (batch, positions, 1) pooling scores over positions
        ((32, 12, 3), 1, 32, None),  # (batch, positions, heads) multi-head pooling
        ((32, 12, 1), 2, 32, "size 1"),  # pooling scores normalized over their singleton
        ((32, 1, 12), 1, 32, "size 1"),
        ((32, 60), 0, 32, "the batch"),
        ((60, 32), 0, 32, None),  # seq-first (positions, batch) pooling over positions
        ((32, 60), 0, None, None),  # batch unknown: no call
        ((32, 32), 0, 32, None),  # ambiguous square
    ],
)
def test_axis_fault_names_only_layouts_that_cannot_be_deliberate(shape, dim, batch, fault):
    from hfault.probes.attention import axis_fault

    found = axis_fault(shape, dim, batch)
    if fault is None:
        assert found is None
    else:
        assert found is not None and fault in found, found


@pytest.mark.parametrize(
    "shape, dim, batch, summed, fault",
    [
        ((32, 32), 0, 32, [1], "sums over dim 1"),  # square: only the product can tell
        ((32, 32), 0, 32, [0], None),  # seq-first pooling over the positions, summed there
        ((32, 60), 0, 32, [1], "the batch"),  # the layout's own message when it has one
        ((32, 12, 12), 1, 32, [1], None),  # keys attending to queries, summed over the queries
        ((32, 12, 12), 1, 32, None, "the queries"),  # no product seen: the layout decides
        ((32, 12, 1), 2, 32, [1], "size 1"),
    ],
)
def test_axis_fault_reads_the_axis_the_weights_are_summed_over(shape, dim, batch, summed, fault):
    from hfault.probes.attention import axis_fault

    found = axis_fault(shape, dim, batch, summed)
    if fault is None:
        assert found is None
    else:
        assert found is not None and fault in found, found


class _Pool(torch.nn.Module):
    """Attention pooling over time, ``(batch, time, dim) -> (batch, dim)``, with the softmax
    axis and the product that applies the weights as constructor arguments."""

    def __init__(self, dim: int, product: str) -> None:
        super().__init__()
        self.dim, self.product = dim, product
        self.score = torch.nn.Linear(4, 1)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        w = torch.softmax(self.score(h).squeeze(-1), dim=self.dim)
        if self.product == "einsum":
            return torch.einsum("bt,btd->bd", w, h)
        return torch.bmm(w.unsqueeze(1), h).squeeze(1)


@pytest.mark.parametrize("product", ["einsum", "bmm"])
@pytest.mark.parametrize("dim, summed", [(0, [1]), (-1, None)])
def test_probe_reads_the_axis_a_pooling_product_sums_over(product, dim, summed):
    """A batch of 6 sequences of 6 steps: the shape cannot say which axis is the batch, the
    product that applies the weights can (through an ``unsqueeze`` view too)."""
    from hfault.components import is_attention_module
    from hfault.probes.attention import AttentionProbe, axis_fault

    torch.manual_seed(0)
    pool = _Pool(dim, product)
    probe = AttentionProbe(lambda m: m is pool or is_attention_module(m))
    probe.start()
    try:
        pool(torch.randn(6, 6, 4, requires_grad=True))
    finally:
        probe.stop()
    axes = probe.stats[id(pool)].to_dict()["softmax_axes"] if probe.stats else []
    if summed is None:
        assert axes == []
        return
    assert axes == [{"shape": [6, 6], "dim": 0, "summed": summed}]
    assert axis_fault([6, 6], 0, 6, summed) is not None
    assert axis_fault([6, 6], 0, 6) is None  # without the product: ambiguous, no call


class _VectorAttention(torch.nn.Module):
    """Point Transformer's vector attention: per-channel weights over each point's k
    neighbours, a (batch, points, k, channels) softmax over the neighbours, applied by an
    elementwise product summed over that axis (``sum_dim``)."""

    def __init__(self, sum_dim: int, call: str) -> None:
        super().__init__()
        self.sum_dim, self.call = sum_dim, call
        self.gamma = torch.nn.Linear(8, 8)

    def forward(self, rel: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        w = torch.nn.functional.softmax(self.gamma(rel), dim=2)
        if self.call == "method":
            return (w * values).sum(dim=self.sum_dim)
        return torch.sum(torch.mul(values, w.view(w.shape)), self.sum_dim)


@pytest.mark.parametrize("call", ["method", "function"])
@pytest.mark.parametrize("sum_dim, fault", [(2, False), (1, True)])
def test_vector_attention_weights_summed_over_their_own_axis_are_not_an_axis_fault(
        call, sum_dim, fault):
    """A 4-D softmax over the neighbour axis, summed over it after an elementwise product, is
    attention over the neighbours (a healthy Point Transformer read as a softmax over the
    queries, an error, before products were followed to their sum); summed over another axis
    it is a fault."""
    from hfault.probes.attention import AttentionProbe, axis_fault

    torch.manual_seed(0)
    attn = _VectorAttention(sum_dim, call)
    probe = AttentionProbe(lambda m: m is attn)
    probe.start()
    try:
        attn(torch.randn(3, 10, 4, 8, requires_grad=True), torch.randn(3, 10, 4, 8))
    finally:
        probe.stop()
    (axes,) = probe.stats[id(attn)].to_dict()["softmax_axes"]
    assert axes == {"shape": [3, 10, 4, 8], "dim": 2, "summed": [sum_dim]}
    assert (axis_fault(axes["shape"], 2, 3, axes["summed"]) is not None) is fault
    assert axis_fault(axes["shape"], 2, 3) is not None  # without the product: read as queries


@pytest.mark.parametrize("equation, summed", [
    ("bt,btd->bd", [(1,), (1,)]),
    ("bhqk,bhkd->bhqd", [(3,), (2,)]),
    ("ij,jk", [(1,), (0,)]),  # implicit output: the letters that appear once, "ik"
    ("...t,...td->...d", [None, None]),
])
def test_einsum_summed(equation, summed):
    from hfault.probes.attention import einsum_summed

    assert einsum_summed(equation, 2) == summed


def test_view_axes_follows_unit_axes_and_refuses_copies_and_transposes():
    from hfault.probes.attention import view_axes

    w = torch.rand(3, 5)
    assert view_axes(w, w, (1,)) == (1,)
    assert view_axes(w.unsqueeze(1), w, (2,)) == (1,)  # (3, 1, 5): its dim 2 is w's dim 1
    assert view_axes(w.unsqueeze(-1), w, (1,)) == (1,)
    assert view_axes(w.t(), w, (1,)) is None  # a transpose reorders the axes
    assert view_axes(w.clone(), w, (1,)) is None
    assert view_axes(torch.rand(3, 5), w, (1,)) is None


def test_row_spread_ignores_masked_entries():
    from hfault.probes.attention import row_spread

    scores = torch.tensor([[1.0, 3.0, -math.inf], [2.0, -1e9, 4.0], [5.0, -math.inf, -math.inf]])
    total, rows, masked = row_spread(scores)
    assert rows == 2 and masked == 4  # the third row has one unmasked entry: no spread
    assert total == pytest.approx(2 * math.sqrt(2.0))


def test_attention_faults_are_named_on_their_modules(cli):
    """One real decoder, one fault per layer; its healthy twin gets no finding at all."""
    script = str(SCRIPTS / "attention_faults_train.py")
    faulty = cli("diagnose", script, "--no-curvature")
    errors = {(f["rule"], f["component"]) for f in faulty.report["findings"]
              if f["severity"] == "error"}
    assert errors == {("HF208", "blocks.0.attn"), ("HF211", "blocks.1.attn"),
                      ("HF209", "blocks.2.attn"), ("HF015", "pos")}
    layer0 = faulty.report["snapshots"][0]["attention"]["blocks.0.attn"]
    layer3 = faulty.report["snapshots"][0]["attention"]["blocks.3.attn"]
    assert layer0["logit_gain"] / layer3["logit_gain"] == pytest.approx(32, rel=0.2)  # √d·√d
    healthy = cli("diagnose", script, "--no-curvature", "--", "--healthy")
    assert healthy.report["findings"] == []


class _AdditiveAttention(torch.nn.Module):
    """Bahdanau-style pooling: a Linear(d, 1) scores each position; ``temperature`` divides."""

    def __init__(self, d: int, temperature: float) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(d, d)
        self.score = torch.nn.Linear(d, 1, bias=False)
        self.temperature = temperature

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scores = self.score(torch.tanh(self.proj(x))).squeeze(-1) / self.temperature
        return (scores.softmax(-1).unsqueeze(-1) * x).sum(1)


class _EinsumAttention(torch.nn.Module):
    """Two-head attention whose scores are an einsum over the head size (8)."""

    def __init__(self) -> None:
        super().__init__()
        self.q_proj = torch.nn.Linear(16, 16)
        self.k_proj = torch.nn.Linear(16, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = self.q_proj(x).unflatten(-1, (2, 8))
        k = self.k_proj(x).unflatten(-1, (2, 8))
        scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(8)
        return scores.softmax(-1).mean()


def _gain(module: torch.nn.Module, x: torch.Tensor) -> float | None:
    from hfault.components import is_attention_module
    from hfault.probes.attention import AttentionProbe

    probe = AttentionProbe(is_attention_module)
    probe.start()
    try:
        module(x)
    finally:
        probe.stop()
    (stats,) = probe.stats.values()
    return stats.to_dict()["logit_gain"]


@pytest.mark.parametrize("temperature", [1.0, 1 / 16, 50.0])
def test_gain_of_scores_made_by_a_linear_layer(temperature):
    """An additive score's operands are the scoring layer's input and weight: the gain is the
    spread per unit of both, 1/temperature up to the init's randomness, ~1 when healthy."""
    torch.manual_seed(0)
    pool, x = _AdditiveAttention(32, temperature), torch.randn(4, 10, 32)
    with torch.no_grad():
        h = torch.tanh(pool.proj(x))
        scores = pool.score(h).squeeze(-1) / temperature
        unit = h.square().mean().sqrt() * pool.score.weight.square().mean().sqrt() * math.sqrt(32)
    assert _gain(pool, x) == pytest.approx(float(scores.std(-1).mean() / unit), rel=1e-5)
    assert 0.3 / temperature < _gain(pool, x) < 3 / temperature


def test_gain_of_einsum_scores_uses_the_contracted_size():
    torch.manual_seed(0)
    attn, x = _EinsumAttention(), torch.randn(3, 6, 16)
    with torch.no_grad():
        q, k = attn.q_proj(x), attn.k_proj(x)
        scores = torch.einsum("bqhd,bkhd->bhqk", q.unflatten(-1, (2, 8)),
                              k.unflatten(-1, (2, 8))) / math.sqrt(8)
        unit = q.square().mean().sqrt() * k.square().mean().sqrt() * math.sqrt(8)
    assert _gain(attn, x) == pytest.approx(float(scores.std(-1).mean() / unit), rel=1e-5)


@pytest.mark.parametrize("equation, shape, size", [
    ("bhqd,bhkd->bhqk", (2, 3, 5, 8), 8),
    ("bqhd,bkhd->bhqk", (2, 5, 3, 8), 8),
    ("ij,jk", (4, 6), 6),  # implicit output
    ("bij,bkj->bik", (2, 4, 6), 6),
    ("...d,...d->...", (2, 4, 6), None),  # ellipsis: not read
    ("i,j->ij", (4,), None),  # an outer product contracts nothing
])
def test_contracted_size(equation, shape, size):
    from hfault.probes.attention import contracted_size

    assert contracted_size(equation, torch.zeros(shape)) == size


class _GraphAttention(torch.nn.Module):
    """Attention restricted to each node's neighbours by a large finite negative fill (GAT)."""

    def __init__(self, adjacency: torch.Tensor) -> None:
        super().__init__()
        self.q_proj = torch.nn.Linear(4, 4)
        self.k_proj = torch.nn.Linear(4, 4)
        self.adjacency = adjacency

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scores = self.q_proj(x) @ self.k_proj(x).transpose(-2, -1) * 0.0  # uniform weights
        scores = scores.masked_fill(~self.adjacency, -9e15)
        return scores.softmax(-1) @ x


def test_entropy_is_normalized_by_the_keys_a_query_may_see():
    """Weights spread evenly over a node's 3 neighbours out of 40 are uniform (1.0), not
    log 3 / log 40; a node with one neighbour has no choice and is not counted."""
    from hfault.components import is_attention_module
    from hfault.probes.attention import AttentionProbe

    adjacency = torch.zeros(40, 40, dtype=torch.bool)
    adjacency[:, :3] = True
    adjacency[0] = False
    adjacency[0, 0] = True  # node 0: one neighbour
    probe = AttentionProbe(is_attention_module)
    probe.start()
    try:
        _GraphAttention(adjacency)(torch.randn(2, 40, 4))
    finally:
        probe.stop()
    (stats,) = probe.stats.values()
    record = stats.to_dict()
    assert record["entropy_norm_mean"] == pytest.approx(1.0, rel=1e-6)
    assert record["entropy_norm_head_min"] == pytest.approx(1.0, rel=1e-6)
    assert record["entropy_mean"] == pytest.approx(39 / 40 * math.log(3), rel=1e-6)


@pytest.mark.parametrize("leak", [0, 1])
def test_a_causal_mask_over_a_memory_is_read(cli, leak):
    """Transformer-XL: from the second segment on, 8 queries attend to 8 memory keys and their
    own 8 under a causal mask aligned with the last keys; a mask shifted by one is a leak there
    too (HF207), the healthy one reads 0."""
    result = cli("diagnose", str(SCRIPTS / "memory_train.py"), "--no-curvature",
                 "--fail-on", "never", "--", "--leak", str(leak))
    read = {s["step"]: (s["attention"]["attn"]["keys"], s["attention"]["attn"]["mask_offset"])
            for s in result.report["snapshots"] if s.get("attention")}
    assert read[2] == (16, leak) and read[16] == (16, leak), read
    found = [(f["rule"], f["component"]) for f in result.findings()
             if f["severity"] in ("error", "warning")]
    assert found == ([("HF207", "attn")] if leak else []), found


class _DetrFirstDecoderLayer(torch.nn.Module):
    """DETR's first decoder layer: its queries start as zeros and the object queries are added
    to the queries and keys only, so its self-attention's values are zero plus a bias."""

    def __init__(self, manual: bool) -> None:
        super().__init__()
        self.manual = manual
        self.attn = torch.nn.MultiheadAttention(8, 2, batch_first=True)
        self.q, self.k, self.v = (torch.nn.Linear(8, 8) for _ in range(3))

    def forward(self, tgt: torch.Tensor, query_pos: torch.Tensor) -> torch.Tensor:
        if not self.manual:
            return self.attn(tgt + query_pos, tgt + query_pos, tgt, need_weights=False)[0]
        q, k, v = self.q(tgt + query_pos), self.k(tgt + query_pos), self.v(tgt)
        return torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(8), -1) @ v


@pytest.mark.parametrize("manual", [False, True])
@pytest.mark.parametrize("start", ["zeros", "random"])
def test_values_the_same_at_every_key_are_recorded(manual, start):
    """SDPA (through nn.MultiheadAttention) and a hand-written product alike: zero queries give
    values that are the bias at every key (the weights cannot matter); random ones do not."""
    from hfault.components import is_attention_module
    from hfault.probes.attention import AttentionProbe

    torch.manual_seed(0)
    layer, query_pos = _DetrFirstDecoderLayer(manual), torch.randn(2, 6, 8)
    tgt = torch.zeros(2, 6, 8) if start == "zeros" else torch.randn(2, 6, 8)
    probe = AttentionProbe(is_attention_module)
    probe.start()
    try:
        layer(tgt, query_pos).sum().backward()
    finally:
        probe.stop()
    (stats,) = probe.stats.values()
    assert stats.to_dict()["values_constant"] == (1.0 if start == "zeros" else 0.0)


def test_constant_over_reads_one_axis_within_float_noise():
    from hfault.probes.attention import constant_over

    bias = torch.randn(1, 1, 8)
    assert constant_over(bias.expand(2, 5, 8) + 1e-9, 1)
    assert not constant_over(bias.expand(2, 5, 8) + torch.randn(2, 5, 8) * 1e-3, 1)
    assert constant_over(bias.expand(2, 5, 8).transpose(1, 2).contiguous(), 2)
    assert not constant_over(torch.randn(2, 1, 8), 1)  # one key: nothing to compare
