"""A non-finite module output is named in the components' scheme: ``pool`` beside ``pool.score``,
never with the model's class as a prefix (which only names the root itself)."""

from __future__ import annotations

from torch import nn

from hfault import ExitCode
from hfault.components import module_paths
from tests.conftest import SCRIPTS

SCRIPT = str(SCRIPTS / "pool_nan_train.py")


def test_nan_in_a_parameter_free_module_is_named_by_its_path(cli):
    result = cli("diagnose", SCRIPT, "--", "--steps", "5", "--bad-step", "3")
    assert result.returncode == ExitCode.FINDINGS, result.stderr
    assert "pool.score" in result.names()
    event = result.report["numerics"][0]
    assert (event["kind"], event["where"], event["step"]) == ("activation", "pool", 3)
    top = result.findings()[0]
    assert top["rule"] == "HF001" and top["evidence"]["where"] == "pool"
    assert top["component"] == "pool.score"  # the component inside the module
    assert top["message"].endswith("in the output of module pool")


def test_nan_before_the_optimizer_exists_is_named_by_its_path(cli):
    # The sanity check raises before any optimizer holds the model's parameters: the module is
    # still named from the model root, not as "Net.pool".
    result = cli("diagnose", SCRIPT, "--", "--steps", "3", "--sanity-check")
    assert result.returncode == ExitCode.SCRIPT_CRASHED, result.stderr
    assert result.report["numerics"][0]["where"] == "pool"
    top = result.findings()[0]
    assert top["rule"] == "HF001" and top["evidence"]["where"] == "pool"
    assert top["component"] == "pool"
    assert top["message"].endswith("in the output of module pool")


class Pool(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.score = nn.Linear(4, 1)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.pool = Pool()
        self.act = nn.Softmax(dim=-1)


def test_module_paths_name_root_by_class_and_the_rest_by_path() -> None:
    net, loss = Net(), nn.CrossEntropyLoss()
    seen = [net, net.pool, net.pool.score, net.act, loss]
    for params in (list(net.parameters()), []):  # with and before an optimizer
        names = module_paths(seen, params)
        assert names[id(net)] == "Net"
        assert names[id(net.pool)] == "pool"
        assert names[id(net.pool.score)] == "pool.score"
        assert names[id(net.act)] == "act"
        assert names[id(loss)] == "CrossEntropyLoss"  # outside the model: its own root
