"""The rule engine through the real CLI: listing and explaining rules, configuration errors,
selection, the demo fault localized end to end, SARIF/GraphML exports and re-rendering."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import networkx as nx
import pytest

from hfault.exitcodes import ExitCode
from tests.conftest import SAMPLES, SCRIPTS, run_cli

ALL_IDS = sorted(p.name[:5] for p in (Path(__file__).parents[2] / "rules").glob("HF*.toml"))


@pytest.fixture
def cli(tmp_path):  # type: ignore[no-untyped-def]
    return lambda *args, **kw: run_cli(list(args), tmp_path, **kw)


def test_rules_lists_every_rule_file(cli) -> None:  # type: ignore[no-untyped-def]
    result = cli("rules", json_report=False)
    assert result.returncode == ExitCode.OK, result.stderr
    for rule_id in ALL_IDS:
        assert rule_id in result.stdout
    assert "sharpness-beyond-stability" in result.stdout


def test_rules_explain_prints_condition_thresholds_and_example(cli) -> None:  # type: ignore[no-untyped-def]
    result = cli("rules", "explain", "HF201", json_report=False)
    assert result.returncode == ExitCode.OK, result.stderr
    for text in ("edge of stability", "streak(effective_ratio > ratio)", "1.5", "Example"):
        assert text in result.stdout
    by_name = cli("rules", "explain", "sharpness-beyond-stability", json_report=False)
    assert by_name.stdout == result.stdout
    missing = cli("rules", "explain", "HF999", json_report=False)
    assert missing.returncode == ExitCode.USAGE
    assert missing.stderr.strip().count("\n") == 0 and "HF999" in missing.stderr


def _copy_script(tmp_path: Path) -> Path:
    folder = tmp_path / "project" / "train"
    folder.mkdir(parents=True)
    for name in ("nan_train.py", "common.py"):
        shutil.copy(SCRIPTS / name, folder / name)
    return folder / "nan_train.py"


def test_malformed_pyproject_setting_is_one_line_with_file_and_line(cli, tmp_path) -> None:  # type: ignore[no-untyped-def]
    script = _copy_script(tmp_path)
    (tmp_path / "project" / "pyproject.toml").write_text(
        '[project]\nname = "x"\n\n[tool.hfault.params.HF201]\nratio = 2.0\nratoi = 3.0\n'
    )
    result = cli("diagnose", str(script), json_report=False)
    assert result.returncode == ExitCode.USAGE
    line = result.stderr.strip()
    assert "\n" not in line and "Traceback" not in line
    assert "pyproject.toml:6:" in line and "ratoi" in line


def test_malformed_user_rule_is_reported_before_the_script_runs(cli, tmp_path) -> None:  # type: ignore[no-untyped-def]
    rules = tmp_path / "my_rules"
    rules.mkdir()
    (rules / "HF900-bad.toml").write_text(
        'id = "HF900"\nname = "bad"\nscope = "component"\nseverity = "warning"\n'
        'category = "x"\nsummary = "s"\nrationale = "r"\nmessage = "m"\n'
        'condition = "grad_rms.__class__"\n'
    )
    result = cli("diagnose", str(SCRIPTS / "forever_train.py"), "--rules", str(rules),
                 json_report=False, timeout=60)
    assert result.returncode == ExitCode.USAGE
    assert "HF900-bad.toml:9:" in result.stderr and "Attribute" in result.stderr


def test_config_file_threshold_and_selection(cli, tmp_path) -> None:  # type: ignore[no-untyped-def]
    script = str(SCRIPTS / "nan_train.py")
    assert cli("diagnose", script, "--select", "HF2").findings() == []
    ignored = cli("diagnose", script, "--ignore", "HF001")
    assert "HF001" not in {f["rule"] for f in ignored.findings()}
    assert "HF001" not in {r["id"] for r in ignored.report["rules"]}
    config = tmp_path / "hfault.toml"
    config.write_text('select = ["HF001"]\n')
    only = cli("diagnose", script, "--config", str(config))
    assert {f["rule"] for f in only.findings()} == {"HF001"}
    assert [r["id"] for r in only.report["rules"]] == ["HF001"]
    bad = cli("diagnose", script, "--select", "HF9", json_report=False)
    assert bad.returncode == ExitCode.USAGE and "matches no rule" in bad.stderr


def test_user_rule_folder_adds_a_rule(cli, tmp_path) -> None:  # type: ignore[no-untyped-def]
    rules = tmp_path / "team_rules"
    rules.mkdir()
    (rules / "HF901-any-gradient.toml").write_text(
        'id = "HF901"\nname = "any-gradient"\nscope = "component"\nseverity = "info"\n'
        'category = "team"\nsummary = "s"\nrationale = "r"\n'
        'condition = "any(grad_rms > limit)"\nmessage = "{component} has a gradient"\n'
        '[params.limit]\ndefault = 0.0\ndoc = "d"\n'
    )
    result = cli("diagnose", str(SCRIPTS / "basic_train.py"), "--rules", str(rules),
                 "--no-curvature")
    assert result.returncode == ExitCode.OK
    hits = result.findings("HF901")
    assert hits and all(f["severity"] == "info" for f in hits)
    assert hits[0]["message"].endswith("has a gradient")


def test_findings_are_deterministic_with_stable_fingerprints(cli) -> None:  # type: ignore[no-untyped-def]
    args = ("diagnose", str(SCRIPTS / "nan_train.py"), "--", "--steps", "8", "--bad-step", "5")
    first, second = cli(*args).findings(), cli(*args).findings()
    strip = [{k: f[k] for k in ("rule", "rank", "component", "score", "fingerprint", "message")}
             for f in first]
    assert strip == [{k: f[k] for k in strip[0]} for f in second]
    assert len({f["fingerprint"] for f in first}) == len(first)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):  # type: ignore[no-untyped-def]
    """The bundled faulty sample (q_proj at 100× LR), once, with every export (and curvature:
    the coupling graph and the q/k-vs-v curvature are what it is judged by)."""
    out = tmp_path_factory.mktemp("demo")
    result = run_cli(
        ["diagnose", "--curvature", str(SAMPLES / "transformer_lr_fault.py"), "--max-steps", "60",
         "--sarif", str(out / "hfault.sarif"), "--graph", str(out / "coupling.graphml")],
        out,
    )
    return result, out


def test_demo_fault_is_localized_with_evidence_fix_and_propagation(demo) -> None:  # type: ignore[no-untyped-def]
    result, _ = demo
    assert result.returncode == ExitCode.FINDINGS, result.stderr
    findings = result.findings()
    top = findings[0]  # the cause: q_proj's own param group at 100× the others' rate
    assert (top["rule"], top["severity"], top["component"]) == (
        "HF023", "error", "blocks.0.attn.q_proj")
    assert top["location"]["path"].endswith(".py") and top["location"]["line"] > 0
    collapse = next(f for f in findings if f["rule"] == "HF204")  # and what it did
    assert (collapse["severity"], collapse["component"]) == ("error", "blocks.0.attn.q_proj")
    assert collapse["evidence"]["value"] < 0.2 and collapse["evidence"]["qk_v"] < 0.05
    assert {f["component"] for f in findings if f["severity"] != "info"} == {
        "blocks.0.attn.q_proj"}, [(f["rule"], f["component"]) for f in findings]
    lr_fixes = [f for f in findings if f["fix"] and f["fix"]["values"]["kind"] == "lower_lr"]
    assert lr_fixes, "the learning-rate fault must come with a learning-rate fix"
    fix = lr_fixes[0]["fix"]
    assert fix["values"]["lr"] == pytest.approx(0.3)
    assert fix["values"]["new_lr"] == pytest.approx(0.003, rel=0.05)
    assert "optimizer.add_param_group(split)" in fix["snippet"]
    # build_optimizer returns it: assigned, split, returned
    assert "transformer_lr_fault.py), assign it to optimizer" in fix["snippet"].replace(
        "\n# ", " ")
    assert fix["snippet"].rstrip().endswith("return optimizer")
    assert lr_fixes[0]["location"]["path"].endswith("transformer_lr_fault.py")
    prop = result.report["propagation"]
    assert prop["paths"] and prop["paths"][0]["source"] == "blocks.0.attn.q_proj"
    assert prop["hubs"]
    assert result.report["summary"]["top_component"] == "blocks.0.attn.q_proj"
    assert "How it propagates" in result.stdout


def test_demo_exports_sarif_and_graphml(demo) -> None:  # type: ignore[no-untyped-def]
    result, out = demo
    sarif = json.loads((out / "hfault.sarif").read_text())
    assert sarif["version"] == "2.1.0"
    run = sarif["runs"][0]
    rule_ids = [r["id"] for r in run["tool"]["driver"]["rules"]]
    assert set(ALL_IDS) <= set(rule_ids)
    results = run["results"]
    assert [r["ruleId"] for r in results] == [f["rule"] for f in result.findings()]
    for r in results:
        assert r["locations"][0]["physicalLocation"]["region"]["startLine"] >= 1
        assert r["partialFingerprints"]["hfault/v1"]
        assert rule_ids[r["ruleIndex"]] == r["ruleId"]
    graph = nx.read_graphml(out / "coupling.graphml")
    assert "blocks.0.attn.q_proj" in graph and graph.number_of_edges() > 0


def test_saved_report_re_renders_with_the_same_verdict(demo, tmp_path) -> None:  # type: ignore[no-untyped-def]
    result, out = demo
    saved = out / "report.json"
    again = run_cli(["report", str(saved), "--sarif", str(tmp_path / "again.sarif")], tmp_path,
                    json_report=False, timeout=60)
    assert again.returncode == ExitCode.FINDINGS, again.stderr
    assert "HF204" in again.stdout and "blocks.0.attn.q_proj" in again.stdout
    sarif = json.loads((tmp_path / "again.sarif").read_text())
    assert len(sarif["runs"][0]["results"]) == len(result.findings())
    never = run_cli(["report", str(saved), "--fail-on", "never", "-q"], tmp_path,
                    json_report=False, timeout=60)
    assert never.returncode == ExitCode.OK and never.stdout == ""
    (tmp_path / "junk.json").write_text("{not json")
    junk = run_cli(["report", str(tmp_path / "junk.json")], tmp_path, json_report=False)
    assert junk.returncode == ExitCode.USAGE and "junk.json:1" in junk.stderr


def test_healthy_sample_has_no_error_finding(cli) -> None:  # type: ignore[no-untyped-def]
    result = cli("diagnose", str(SAMPLES / "transformer_encoder.py"), "--max-steps", "60")
    assert result.returncode == ExitCode.OK, result.stdout
    assert not [f for f in result.findings() if f["severity"] == "error"]
    assert not [f for f in result.findings() if f["rule"].startswith("HF2")], result.findings()


@pytest.mark.parametrize("swap_layer", [-1, 0, 1, 2])
def test_attention_over_the_batch_is_found_when_the_loss_is_flattened(cli, swap_layer) -> None:  # type: ignore[no-untyped-def]
    """A language model flattens batch × positions into the loss, so the loss does not give the
    batch; the model's (8, 12) input does: the block handed (positions, batch, d) attends over 8
    keys where the other two attend over 12."""
    result = cli("diagnose", str(SCRIPTS / "batch_axis_train.py"), "--no-curvature",
                 "--fail-on", "never", "--", "--steps", "20", "--swap-layer", str(swap_layer))
    attention = result.report["snapshots"][0]["attention"]
    assert {m: a["input_axes"] for m, a in attention.items()} == {
        f"blocks.{i}.attn": [8, 12] for i in range(3)}
    found = [(f["component"], f["severity"]) for f in result.findings("HF212")]
    assert found == ([] if swap_layer < 0 else [(f"blocks.{swap_layer}.attn", "error")])


@pytest.mark.parametrize("swap_layer", [-1, 0])
def test_a_one_layer_model_mixing_samples_is_told_by_its_position_ids(cli, swap_layer) -> None:  # type: ignore[no-untyped-def]
    """One layer, a flattened loss: no other layer to compare with and no per-sample loss; the
    position embedding's ids (0..11) say which of the input's sizes is the positions."""
    result = cli("diagnose", str(SCRIPTS / "batch_axis_train.py"), "--no-curvature",
                 "--fail-on", "never", "--", "--steps", "6", "--layers", "1",
                 "--swap-layer", str(swap_layer))
    assert result.report["sample_mixing"]["positions"] == 12
    found = [(f["component"], f["severity"]) for f in result.findings("HF213")]
    assert found == ([] if swap_layer < 0 else [("blocks.0.attn", "error")])
    if found:
        assert "position embedding" in result.findings("HF213")[0]["message"]


@pytest.mark.parametrize("lr, diverges", [("3", True), ("0.01", False)])
def test_a_divergence_that_ends_in_inf_is_reported_before_the_inf(cli, lr, diverges) -> None:  # type: ignore[no-untyped-def]
    """The loss climbs from 0.43 to 1e34 over 19 steps, then overflows: the learning rate is the
    cause (HF022, first), the first inf (HF001) where it ended. (On some CPUs one layer's update
    ratio also explodes on its way there, an HF002 error ranked between them: the divergence
    amplifies the last bits in which CPUs' kernels differ.)"""
    result = cli("diagnose", str(SCRIPTS / "diverge_train.py"), "--no-curvature",
                 "--fail-on", "never", "--", "--steps", "30", "--lr", lr)
    rules = [f["rule"] for f in result.findings() if f["severity"] == "error"]
    if diverges:
        assert rules[0] == "HF022" and "HF001" in rules, rules
        assert set(rules) <= {"HF022", "HF001", "HF002"}, rules
        assert "learning rate 3" in result.findings("HF022")[0]["message"]
    else:
        assert "HF022" not in rules and "HF001" not in rules


@pytest.mark.parametrize("drop_mask", [False, True])
def test_cross_attention_sharing_a_self_attentions_path_is_not_its_peer(cli, drop_mask) -> None:  # type: ignore[no-untyped-def]
    """x-transformers lists a layer's self- and cross-attention in one list (``layers.0.1``,
    ``layers.1.1``): the cross-attention masks nothing and attends over the source (16 keys, the
    batch's size too), yet it neither lost a causal mask nor attends over the batch. A decoder
    self-attention that did lose its mask is still found."""
    args = ["--", "--steps", "8"] + (["--drop-mask"] if drop_mask else [])
    result = cli("diagnose", str(SCRIPTS / "mixed_blocks_train.py"), "--no-curvature",
                 "--fail-on", "never", *args)
    attention = result.report["snapshots"][0]["attention"]
    assert {m: (a["queries"], a["keys"]) for m, a in attention.items()
            if m.startswith("decoder")} == {
        "decoder.layers.0.1": (9, 9), "decoder.layers.1.1": (9, 16),
        "decoder.layers.3.1": (9, 9), "decoder.layers.4.1": (9, 16)}
    found = [(f["rule"], f["component"]) for f in result.findings()
             if f["rule"] in ("HF211", "HF212")]
    assert found == ([("HF211", "decoder.layers.3.1")] if drop_mask else [])
