"""The sample-mixing probe against exact dependence structures, and HF213 on a real layout bug."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from hfault import ExitCode
from hfault.probes.sample_mixing import mixing_shares, per_position, reentrant_checkpoint
from hfault.rules.batch_axis import batch_mixers, mixers
from tests.conftest import SCRIPTS, assert_same_training, run_plain


def _shares(fn, x: torch.Tensor) -> list[float | None]:
    x = x.clone().requires_grad_(True)
    y = fn(x)
    return [None if s is None else float(s) for s in
            mixing_shares(x, y, torch.Generator().manual_seed(0))]


def test_an_independent_axis_has_exactly_zero_share() -> None:
    layer = nn.Linear(3, 3).double()
    assert _shares(layer, torch.randn(4, 5, 3, dtype=torch.float64)) == [0.0, 0.0]


@pytest.mark.parametrize("axis", [0, 1])
def test_the_share_of_a_mean_over_one_axis_is_exact(axis: int) -> None:
    """y = x + mean(x along the axis): the last index's output gets r(1 + 1/n) from its own input
    and r/n from each of the n − 1 others, whatever the projection r: the share on the others is
    √(n − 1)/n over √((n − 1)/n² + (1 + 1/n)²)."""
    x = torch.randn(4, 6, 3, dtype=torch.float64)
    n = x.shape[axis]
    shares = _shares(lambda t: t + t.mean(axis, keepdim=True), x)
    expected = math.sqrt(n - 1) / n / math.sqrt((n - 1) / n**2 + (1 + 1 / n) ** 2)
    assert shares[axis] == pytest.approx(expected, rel=1e-12)
    assert shares[1 - axis] == 0.0


def test_an_axis_the_output_does_not_keep_is_not_judged() -> None:
    assert _shares(lambda t: t.sum(1, keepdim=True), torch.randn(4, 6, 3)) == [0.0, None]


def test_per_position_layers_are_skipped_and_batch_norm_is_not() -> None:
    assert per_position(nn.Linear(2, 2)) and per_position(nn.LayerNorm(2))
    assert per_position(nn.GELU()) and per_position(nn.Dropout())
    assert not per_position(nn.GRU(2, 2)) and not per_position(nn.MultiheadAttention(4, 2))
    assert not per_position(nn.BatchNorm1d(2))


def test_a_reentrant_checkpoint_is_found_in_the_graph() -> None:
    layer = nn.Linear(3, 3)
    x = torch.randn(2, 3, requires_grad=True)
    assert not reentrant_checkpoint(layer(x).sum())
    assert reentrant_checkpoint(checkpoint(layer, x, use_reentrant=True).sum())
    assert not reentrant_checkpoint(checkpoint(layer, x, use_reentrant=False).sum())


def _module(name: str, sizes: list[int], mixes: list[bool]) -> dict:
    return {"module": name, "type": "M", "sizes": sizes, "shares": [0.5 * m for m in mixes],
            "mixes": mixes}


def test_a_block_around_a_mixing_module_is_not_counted_again() -> None:
    found = mixers([_module("h.0.attn", [8, 12], [False, True]),
                    _module("h.0", [8, 12], [False, True]),
                    _module("h.1", [8, 12], [True, True])])
    assert found == [("h.0.attn", {12}), ("h.1", {8, 12})]


def test_the_batch_comes_from_the_loss_then_from_the_fewer_mixers() -> None:
    modules = [_module("a", [12, 8], [False, True]), _module("b", [8, 12], [False, True]),
               _module("c", [8, 12], [False, True])]
    by_loss = batch_mixers({"input_axes": [8, 12], "batch": 8, "modules": modules})
    assert by_loss["culprits"] == ["a"] and by_loss["how"] == "the loss's samples"
    by_vote = batch_mixers({"input_axes": [8, 12], "batch": 96, "modules": modules})
    assert by_vote["culprits"] == ["a"] and by_vote["peers"] == 2
    seq_first = batch_mixers({"input_axes": [12, 8], "batch": 96, "modules": modules[1:]})
    assert seq_first["culprits"] == []  # every module mixes along one size: consistent
    square = batch_mixers({"input_axes": [8, 8], "batch": 8, "modules": modules})
    assert square["culprits"] == []


@pytest.mark.parametrize(
    "options, fires",
    [(["--swap"], True), ([], False), (["--swap", "--flat"], True), (["--flat"], False),
     (["--bn"], False), (["--bn", "--swap"], True)],
)
def test_a_batch_first_layer_fed_positions_first_is_found(cli, options, fires) -> None:
    result = cli("diagnose", str(SCRIPTS / "gru_layout_train.py"), "--no-curvature", "--",
                 "--steps", "4", *options)
    record = result.report["sample_mixing"]
    assert record["step"] == 1 and {m["module"] for m in record["modules"]} == {"rnn", "rnn2"}
    found = result.findings("HF213")
    assert bool(found) == fires, result.report["findings"]
    if fires:
        assert found[0]["component"] == "rnn" and found[0]["severity"] == "error"
        assert result.returncode == ExitCode.FINDINGS
        assert "batch_first" in found[0]["fix"]["summary"]


def test_the_probe_leaves_training_bit_exact(cli, tmp_path: Path) -> None:
    args = ["--steps", "5", "--swap", "--bn"]
    plain, watched = tmp_path / "plain.pt", tmp_path / "watched.pt"
    run_plain(SCRIPTS / "gru_layout_train.py", [*args, "--out", str(plain)])
    result = cli("diagnose", str(SCRIPTS / "gru_layout_train.py"), "--no-curvature",
                 "--fail-on", "never", "--", *args, "--out", str(watched))
    assert result.report["sample_mixing"]["modules"], result.stderr
    assert_same_training(plain, watched)


def test_a_module_whose_two_leading_sizes_are_equal_says_nothing() -> None:
    """A Conv1d with as many channels as the batch has samples mixes its channels: by size alone
    that looks like mixing the batch, so such a module is not judged."""
    modules = [_module("stem.2", [48, 48], [False, True]), _module("mha", [20, 48], [True, False])]
    assert batch_mixers({"input_axes": [48, 3], "batch": 48, "modules": modules})[
        "culprits"] == []


def test_positions_made_inside_the_model_leave_the_input_first_axis_as_the_batch() -> None:
    """An image (32, 3, H, W) patchified inside the model: no module holds the 3 channels as a
    leading size, the encoder mixes its 9 patches, and a decoder attention handed (36, 32) mixes
    the 32 images. With the same encoder alone, or with every mixer along the first axis (one
    graph's nodes), nothing is said."""
    encoder = [_module(f"blocks.{i}.attn", [32, 9], [False, True]) for i in range(3)]
    swapped = _module("decoder.attn", [36, 32], [False, True])
    found = batch_mixers({"input_axes": [32, 3], "batch": None, "modules": [*encoder, swapped]})
    assert found["culprits"] == ["decoder.attn"]
    assert (found["batch"], found["positions"], found["peers"]) == (32, 9, 3)
    assert "made inside" in found["how"]
    healthy = [*encoder, _module("decoder.attn", [32, 36], [False, True])]
    assert batch_mixers({"input_axes": [32, 3], "modules": healthy})["culprits"] == []
    nodes = [_module("gat.0", [20, 4], [True, False]), _module("gat.1", [20, 4], [True, False])]
    assert batch_mixers({"input_axes": [20, 7], "modules": nodes})["culprits"] == []
    held = [*encoder, swapped, _module("stem", [32, 3], [False, False])]
    assert batch_mixers({"input_axes": [32, 3], "modules": held})["culprits"] == []
