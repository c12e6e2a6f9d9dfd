"""The next-token probe against hand-made layouts, and HF215 on a real decoder whose every
layer lost its causal mask (its causal twin stays quiet)."""

from __future__ import annotations

import pytest
import torch

from hfault.probes.next_token import shifted_matches
from tests.conftest import SCRIPTS


def _share(tokens: torch.Tensor, target: torch.Tensor, ignore: int = -100) -> float:
    found = shifted_matches(tokens, target, ignore)
    assert found is not None
    matched, counted = found.tolist()
    return matched / counted


def test_targets_laid_out_like_the_inputs_flattened_or_not() -> None:
    data = torch.randint(0, 50, (4, 9), generator=torch.Generator().manual_seed(0))
    x, y = data[:, :-1], data[:, 1:]  # nanoGPT: y is x one position later
    assert _share(x, y) == 1.0
    assert _share(x, y.reshape(-1)) == 1.0


def test_targets_shifted_inside_the_model_and_ignored_positions() -> None:
    x = torch.randint(0, 50, (4, 8), generator=torch.Generator().manual_seed(1))
    labels = x[:, 1:].clone()  # transformers shifts labels = input_ids inside the model
    assert _share(x, labels) == 1.0
    labels[:, -2:] = -100  # padding: left out, not counted as a miss
    assert _share(x, labels) == 1.0
    found = shifted_matches(x, labels)
    assert found is not None and found[1].item() == 4 * 5


def test_sequence_first_data() -> None:
    data = torch.randint(0, 50, (9, 4), generator=torch.Generator().manual_seed(2))
    x, y = data[:-1], data[1:]  # word_language_model: (T, B), targets flattened
    assert _share(x, y.reshape(-1)) == 1.0


def test_other_tasks_match_by_chance_only() -> None:
    g = torch.Generator().manual_seed(3)
    x = torch.randint(0, 50, (16, 32), generator=g)
    assert _share(x, torch.randint(0, 50, (16, 32), generator=g)) < 0.1  # tagging
    assert _share(x, x) < 0.1  # reconstructing the input is not predicting the next token
    assert shifted_matches(x, torch.randint(0, 3, (16,), generator=g)) is None  # one per sample
    assert shifted_matches(x, torch.rand(16, 32)) is None  # regression targets


@pytest.mark.parametrize("variants, fires", [
    (["--unmasked"], True), (["--healthy"], False),
    (["--unmasked", "--nll"], True),  # log_softmax into nll_loss (pytorch/examples' form)
])
def test_a_decoder_without_any_causal_mask_is_an_error(cli, variants: list[str], fires: bool
                                                      ) -> None:
    done = cli("diagnose", str(SCRIPTS / "attention_faults_train.py"), "--no-curvature",
               "--", *variants)
    shares = [r["next_token_share"] for r in done.report["next_token"]]
    assert shares and min(shares) == 1.0
    found = [(f["rule"], f["component"]) for f in done.report["findings"]]
    if fires:
        assert found == [("HF215", "blocks.0.attn")]
        assert done.report["findings"][0]["step"] == done.report["next_token"][0]["step"]
    else:
        assert found == []


@pytest.mark.parametrize("variants, fires", [
    (["--healthy", "--unshifted"], True),  # a causal decoder asked for the token it reads
    (["--healthy", "--unshifted", "--nll"], True),
    (["--healthy"], False),
])
def test_targets_never_shifted_are_an_error(cli, variants: list[str], fires: bool) -> None:
    done = cli("diagnose", str(SCRIPTS / "attention_faults_train.py"), "--no-curvature",
               "--", *variants)
    records = done.report["next_token"]
    own = [r["own_token_share"] for r in records]
    assert own and (min(own) == 1.0 if fires else max(own) < 0.1), own
    found = [(f["rule"], f["severity"]) for f in done.report["findings"]]
    assert (("HF217", "error") in found) == fires, found
    if fires:
        assert done.report["findings"][0]["rule"] == "HF217"


def test_own_position_matches_skip_repeated_tokens() -> None:
    from hfault.probes.next_token import own_matches

    x = torch.tensor([[1, 2, 2, 3, 4, 4, 5]])
    counted_where = (x[:, :-1] != x[:, 1:]).sum()  # 4 positions: a repeat matches either way
    matched, counted, positions = own_matches(x, x).tolist()  # never shifted
    assert (matched, counted) == (float(counted_where), float(counted_where))
    assert positions == 7.0  # the ids' positions, which HF217 compares with attention keys
    matched, counted, _ = own_matches(x, torch.cat([x[:, 1:], x[:, :1]], 1)).tolist()  # shifted
    assert matched == 0.0 and counted == float(counted_where)
    matched, _, _ = own_matches(x, x[:, 1:]).tolist()  # shifted inside the model (T - 1)
    assert matched == 0.0
