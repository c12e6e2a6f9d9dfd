"""The label-fit probe's ranks against a per-row reference, and its shares on labels with a known
share of random ones."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from hfault import ExitCode
from hfault.probes.label_fit import MAX_ROWS, confidence_of, label_ranks, label_rows
from hfault.rules.features import _tail_flatness
from tests.conftest import SCRIPTS, assert_same_training, run_plain


def _reference(logits: torch.Tensor, target: torch.Tensor) -> list[float]:
    """Per row: how many classes score strictly above the target, over C − 1 (Python loops)."""
    out = []
    for row, t in zip(logits.tolist(), target.tolist(), strict=True):
        out.append(sum(v > row[t] for v in row) / (len(row) - 1))
    return out


def test_ranks_match_the_reference_row_by_row() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 7, generator=g)
    target = torch.randint(0, 7, (64,), generator=g)
    ranks = label_ranks(logits, target)
    assert ranks is not None
    assert ranks.tolist() == pytest.approx(_reference(logits, target))


def test_sequence_logits_ignore_index_and_probability_targets() -> None:
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(4, 9, 5, generator=g)  # (batch, classes, positions), as cross_entropy
    target = torch.randint(0, 9, (4, 5), generator=g)
    target[0, :2] = -100
    ranks = label_ranks(logits, target)
    flat = logits.movedim(1, -1).reshape(-1, 9)
    keep = target.reshape(-1) != -100
    assert ranks is not None and ranks.numel() == 18
    assert ranks.tolist() == pytest.approx(_reference(flat[keep], target.reshape(-1)[keep]))
    soft = torch.nn.functional.one_hot(target.clamp_min(0), 9).movedim(-1, 1).float() * 0.9 + 0.01
    ranks = label_ranks(logits, soft)
    assert ranks is not None and ranks.numel() == 20


def test_two_classes_are_read_and_non_logits_are_not() -> None:
    """With two classes a miss ranks the target last (rank 1): the lower half is the error rate."""
    logits = torch.tensor([[2.0, -1.0], [0.5, 1.5], [-3.0, 3.0]])
    ranks = label_ranks(logits, torch.tensor([0, 0, 1]))
    assert ranks is not None and ranks.tolist() == [0.0, 1.0, 0.0]
    assert label_ranks(torch.randn(8, 1), torch.zeros(8, dtype=torch.long)) is None
    assert label_ranks(torch.randn(8), torch.zeros(8, dtype=torch.long)) is None
    assert label_ranks(torch.randn(8, 5), torch.zeros(7, dtype=torch.long)) is None


def test_rows_without_a_finite_score_are_left_out() -> None:
    """log_softmax outputs fed to cross_entropy can hold -inf (a saturated softmax), a diverging
    model NaN: such rows have no rank or confidence; the others are read."""
    logits = torch.randn(6, 5)
    logits[0, 2] = float("nan")
    logits[1] = float("-inf")
    logits[2, 3] = float("-inf")  # one class impossible: still a row
    rows = label_rows(logits, torch.zeros(6, dtype=torch.long))
    assert rows is not None and rows[0].shape[0] == 4
    assert bool(torch.isfinite(confidence_of(rows[0])).all())


def test_rows_are_subsampled_to_the_cap() -> None:
    logits = torch.randn(3 * MAX_ROWS, 5)
    ranks = label_ranks(logits, torch.zeros(3 * MAX_ROWS, dtype=torch.long))
    assert ranks is not None and ranks.numel() <= MAX_ROWS


@pytest.mark.parametrize("noise", [0.0, 0.2, 0.4])
def test_a_fitted_model_puts_random_labels_in_the_lower_half(noise: float) -> None:
    """A model that ranks the true class first and the others at random: a share ``noise`` of
    random labels puts about noise × (C − 1)/C of all targets among the misses, half of them in
    the lower half of the ranking, and the missed targets' mean rank near 0.5."""
    g = torch.Generator().manual_seed(2)
    n, c = 20000, 10
    true = torch.randint(0, c, (n,), generator=g)
    logits = torch.randn(n, c, generator=g)
    logits[torch.arange(n), true] = 10.0
    noisy = torch.rand(n, generator=g) < noise
    target = torch.where(noisy, torch.randint(0, c, (n,), generator=g), true)
    ranks = label_ranks(logits, target)
    assert ranks is not None
    miss = noise * (c - 1) / c
    lower = ranks.numel() and float((ranks >= 0.5).float().mean())
    assert float((ranks == 0).float().mean()) == pytest.approx(1 - miss, abs=0.02)
    # normalized ranks 1/9 ... 9/9 of a missed target are uniform: 5 of the 9 are >= 0.5
    assert lower == pytest.approx(miss * 5 / 9, abs=0.02)
    if noise:
        assert float(ranks[ranks > 0].mean()) == pytest.approx(5 / 9, abs=0.03)
        # random labels land on every lower-half position alike: flatness 1
        assert _tail_flatness(float(ranks[ranks >= 0.5].mean()), c) == pytest.approx(1, abs=0.05)


def test_an_unfitted_models_misses_thin_out_toward_the_bottom() -> None:
    """A model still fitting misses to its second, third... choice with falling odds: its
    lower-half targets sit near the middle, not spread evenly."""
    g = torch.Generator().manual_seed(3)
    n, c = 20000, 5
    rank = torch.multinomial(torch.tensor([0.6, 0.24, 0.1, 0.04, 0.02]), n, replacement=True,
                             generator=g)
    logits = torch.arange(c, 0, -1, dtype=torch.float32).repeat(n, 1)  # class i ranked i-th
    ranks = label_ranks(logits, rank)
    assert ranks is not None
    flatness = _tail_flatness(float(ranks[ranks >= 0.5].mean()), c)
    assert flatness is not None and 0.3 < flatness < 0.6
    assert _tail_flatness(1.0, 2) == 1.0 and _tail_flatness(None, 5) is None


@pytest.mark.parametrize(
    "options, fires",
    [
        (["--noise", "0.4"], True),
        (["--noise", "0.4", "--smooth"], True),  # class-probability targets
        (["--noise", "0.4", "--ignore", "0.3"], True),  # nn.CrossEntropyLoss, ignore_index rows
        (["--noise", "0.4", "--nll"], True),  # log_softmax into nn.NLLLoss
        (["--noise", "0", "--nll"], False),
        (["--noise", "0"], False),
        (["--noise", "0", "--smooth"], False),
        (["--noise", "0.4", "--classes", "2"], True),  # binary: the model as sure on the misses
        (["--noise", "0", "--classes", "2"], False),
        # labels noisy near the class boundary, where the model is unsure too: a hard task
        (["--graded", "--classes", "2"], False),
    ],
)
def test_random_labels_are_found_in_a_real_training_run(cli, options, fires) -> None:
    result = cli("diagnose", str(SCRIPTS / "label_noise_train.py"), "--no-curvature", "--",
                 "--steps", "300", *options)
    records = result.report["label_fit"]
    assert [r["step"] for r in records] == [1, 2, 4, 8, 16, 32, 64, 128, 256]
    classes = int(options[options.index("--classes") + 1]) if "--classes" in options else 6
    assert all(r["classes"] == classes for r in records)
    if "--ignore" in options:  # the ignored rows are not read
        assert all(60 <= r["samples"] <= 110 for r in records), records
    else:
        assert all(r["samples"] == 128 for r in records)
    found = result.findings("HF017")
    assert bool(found) == fires, result.report["findings"]
    assert result.returncode == (ExitCode.FINDINGS if fires else 0), result.stderr
    if fires:
        assert found[0]["severity"] == "error" and found[0]["step"] == 256
        assert records[-1]["lower_half"] > 0.1 and records[-1]["accuracy"] > 0.5
    elif "--graded" not in options:
        assert records[-1]["lower_half"] < 0.03


def test_reading_the_labels_leaves_training_bit_exact(cli, tmp_path: Path) -> None:
    args = ["--steps", "70", "--noise", "0.4", "--ignore", "0.2"]
    plain, watched = tmp_path / "plain.pt", tmp_path / "watched.pt"
    run_plain(SCRIPTS / "label_noise_train.py", [*args, "--out", str(plain)])
    result = cli("diagnose", str(SCRIPTS / "label_noise_train.py"), "--no-curvature",
                 "--fail-on", "never", "--", *args, "--out", str(watched))
    assert result.report["label_fit"], result.stderr
    assert_same_training(plain, watched)
