"""Padding found in a model's input, the weight attention puts on it (HF216), and position ids
telling the positions axis apart from the batch (HF213)."""

from __future__ import annotations

import pytest
import torch

from hfault.probes.attention import AttentionProbe, padding_positions
from hfault.probes.sample_mixing import position_ids_size
from tests.conftest import SCRIPTS


def _padded_ids(seed: int = 0, batch: int = 8, length: int = 12) -> tuple[torch.Tensor,
                                                                            torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 30, (batch, length), generator=g)
    lengths = torch.tensor([12, 3, 7, 9, 12, 5, 10, 4])[:batch]
    pad = torch.arange(length)[None, :] >= lengths[:, None]
    return ids.masked_fill(pad, 0), pad


def test_trailing_pad_ids_are_found_exactly() -> None:
    ids, pad = _padded_ids()
    (found,) = padding_positions(ids)
    assert torch.equal(found, pad)


def test_left_padding_and_sequence_first_layouts() -> None:
    ids, pad = _padded_ids()
    (left,) = padding_positions(ids.flip(1))
    assert torch.equal(left, pad.flip(1))
    # (positions, batch) data: found sequence-first (a batch-first reading is kept too when it
    # also looks padded; the attention weights it is matched with settle which is right)
    assert any(torch.equal(found, pad) for found in padding_positions(ids.t()))


def test_zero_feature_vectors_pad_a_float_input() -> None:
    _, pad = _padded_ids()
    x = torch.randn(8, 12, 5).masked_fill(pad[..., None], 0.0)
    (found,) = padding_positions(x)
    assert torch.equal(found, pad)
    assert padding_positions(torch.randn(8, 12)) == []  # a 2-D float input: values, not pads


def test_unpadded_inputs_are_not_called_padded() -> None:
    g = torch.Generator().manual_seed(1)
    assert padding_positions(torch.randint(0, 65, (32, 64), generator=g)) == []  # text
    ids = torch.randint(1, 30, (8, 12), generator=g)
    ids[:, -3:] = 0  # the same suffix everywhere (an end marker): not padding
    assert padding_positions(ids) == []
    assert padding_positions(torch.randn(4, 3, 32, 32)) == []  # images
    digits = torch.rand(8, 28, 28)  # MNIST-like rows: blank above and below each digit
    for i, (top, bottom) in enumerate(zip([3, 4, 5, 6, 3, 4, 5, 6], [2, 5, 3, 6, 4, 2, 7, 3],
                                          strict=True)):
        digits[i, :top], digits[i, 28 - bottom:] = 0, 0
    assert padding_positions(digits) == []


def _weights(masked: bool) -> tuple[dict, torch.Tensor]:
    ids, pad = _padded_ids()
    scores = torch.randn(8, 2, 12, 12)
    if masked:
        scores = scores.masked_fill(pad[:, None, None, :], float("-inf"))
    attention = torch.nn.Module()
    probe = AttentionProbe(lambda m: m is attention)
    probe.start()
    try:
        embed = torch.nn.Embedding(30, 4)
        embed(ids)  # the first module called: the model's input
        attention.register_forward_hook(lambda m, a, o: None)
        with torch.enable_grad():
            probe._push(attention, ())
            p = torch.softmax(scores.requires_grad_(), dim=-1)
            probe._pop(attention, (), None)
    finally:
        probe.stop()
    return probe.stats[id(attention)].to_dict(), p.detach()


def test_the_weight_on_padding_is_zero_under_a_mask_and_exact_without() -> None:
    masked, _ = _weights(True)
    assert masked["padding_mass"] == 0.0
    plain, p = _weights(False)
    _, pad = _padded_ids()
    rows = (pad.any(1) & (~pad).any(1))[:, None] & ~pad  # real queries of padded samples
    mass = (p * pad[:, None, None, :]).sum(-1)  # (batch, heads, queries)
    expected = mass.permute(0, 2, 1)[rows].mean()
    assert plain["padding_mass"] == pytest.approx(float(expected), rel=1e-6)
    share = pad.float().mean(1)[:, None].expand(-1, 12)[rows].mean()
    assert plain["padding_share"] == pytest.approx(float(share), rel=1e-6)


def test_position_ids() -> None:
    assert position_ids_size(torch.arange(12)) == 12
    assert position_ids_size(torch.arange(12).expand(4, -1)) == 12
    assert position_ids_size(torch.arange(3, 15)[None]) == 12  # from an offset (a KV cache)
    assert position_ids_size(torch.randint(0, 12, (4, 12))) is None
    assert position_ids_size(torch.zeros(4, 12, dtype=torch.long)) is None  # token type ids


@pytest.mark.parametrize("bug", [False, True])
def test_a_pooling_head_called_without_the_mask_is_an_error(cli, bug: bool) -> None:
    args = ["--steps", "8", *(["--unmasked-pool"] if bug else [])]
    done = cli("diagnose", str(SCRIPTS / "padding_train.py"), "--no-curvature",
               "--fail-on", "never", "--", *args)
    attention = done.report["snapshots"][0]["attention"]
    assert attention["blocks.0.attn"]["padding_mass"] == 0.0
    assert attention["pool.attn"]["padding_share"] > 0.2
    found = [(f["rule"], f["severity"], f["component"]) for f in done.report["findings"]
             if f["rule"] == "HF216"]
    assert found == ([("HF216", "error", "pool.attn")] if bug else [])
    if bug:
        assert "2 other attention module(s)" in done.report["findings"][0]["message"]


def test_scores_zeroed_at_the_padding_are_masked_after_the_softmax() -> None:
    """AllenNLP's masked_softmax: softmax(scores * mask), then * mask and renormalized: the
    softmax's own weights reach the padding, the weights applied do not."""
    from hfault.probes.attention import padding_weight

    _, pad = _padded_ids()
    scores = torch.randn(8, 2, 12, 12) * (~pad)[:, None, None, :]
    p = scores.softmax(-1)
    assert padding_weight(p, pad, scores) is None
    found = padding_weight(p, pad)
    assert found is not None and found[0] > 0


def test_ids_of_three_dimensions_sentences_of_words() -> None:
    """A HAN's (documents, sentences, words) ids: a sentence position is padding when all its
    words are the pad id."""
    ids, pad = _padded_ids()
    docs = ids[:, :, None].expand(-1, -1, 5).clone()
    (found,) = padding_positions(docs)
    assert torch.equal(found, pad)


@pytest.mark.parametrize("null_key", [True, False])
def test_padded_keys_of_one_constant_state_score_alike(null_key: bool) -> None:
    """SASRec zeroes the padded states after every block: every padded key is the same vector
    and scores alike for each query (one "null" key). Pads given a position embedding do not."""
    from hfault.probes.attention import padding_weight

    _, pad = _padded_ids()
    g = torch.Generator().manual_seed(2)
    q, k = torch.randn(8, 2, 12, 4, generator=g), torch.randn(8, 2, 12, 4, generator=g)
    if null_key:
        k = torch.where(pad[:, None, :, None], torch.full_like(k, 0.3), k)
    scores = q @ k.transpose(-2, -1) / 2
    found = padding_weight(scores.softmax(-1), pad, scores)
    assert found is not None and found.mass > 0
    rows = (pad.any(1) & (~pad).any(1))[:, None] & ~pad & (pad.sum(1) >= 2)[:, None]
    assert found.several == int(rows.sum()) * 2  # real queries of samples with 2+ pads, per head
    assert found.alike == (found.several if null_key else 0)
