"""SARIF output: the SARIF 2.1.0 properties GitHub code scanning relies on, checked on a report
dict built by hand (no training run)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from hfault.report.sarif import sarif_rank, to_sarif, write_sarif

# The parts of the SARIF 2.1.0 schema (oasis-tcs/sarif-spec, sarif-schema-2.1.0.json) that matter
# here, plus GitHub's extra demand that every result has a location.
_MESSAGE = {
    "type": "object",
    "required": ["text"],
    "properties": {"text": {"type": "string", "minLength": 1}, "markdown": {"type": "string"}},
}
_LEVEL = {"enum": ["none", "note", "warning", "error"]}
SARIF_FRAGMENT: dict[str, Any] = {
    "type": "object",
    "required": ["version", "runs"],
    "properties": {
        "$schema": {"type": "string"},
        "version": {"const": "2.1.0"},
        "runs": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["tool"],
                "properties": {
                    "tool": {
                        "type": "object",
                        "required": ["driver"],
                        "properties": {
                            "driver": {
                                "type": "object",
                                "required": ["name"],
                                "properties": {
                                    "name": {"type": "string"},
                                    "version": {"type": "string"},
                                    "informationUri": {"type": "string", "format": "uri"},
                                    "rules": {
                                        "type": "array",
                                        "items": {
                                            "type": "object",
                                            "required": ["id"],
                                            "properties": {
                                                "id": {"type": "string"},
                                                "shortDescription": _MESSAGE,
                                                "fullDescription": _MESSAGE,
                                                "help": _MESSAGE,
                                                "defaultConfiguration": {
                                                    "type": "object",
                                                    "properties": {"level": _LEVEL},
                                                },
                                                "properties": {
                                                    "type": "object",
                                                    "properties": {
                                                        "tags": {
                                                            "type": "array",
                                                            "items": {"type": "string"},
                                                        }
                                                    },
                                                },
                                            },
                                        },
                                    },
                                },
                            }
                        },
                    },
                    "invocations": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["executionSuccessful"],
                            "properties": {
                                "executionSuccessful": {"type": "boolean"},
                                "toolExecutionNotifications": {
                                    "type": "array",
                                    "items": {
                                        "type": "object",
                                        "required": ["message"],
                                        "properties": {"level": _LEVEL, "message": _MESSAGE},
                                    },
                                },
                            },
                        },
                    },
                    "originalUriBaseIds": {
                        "type": "object",
                        "additionalProperties": {
                            "type": "object",
                            "required": ["uri"],
                            "properties": {"uri": {"type": "string", "pattern": "^file://.*/$"}},
                        },
                    },
                    "results": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["message", "ruleId", "locations"],
                            "properties": {
                                "ruleId": {"type": "string"},
                                "ruleIndex": {"type": "integer", "minimum": -1},
                                "level": _LEVEL,
                                "message": _MESSAGE,
                                "rank": {"type": "number", "minimum": 0, "maximum": 100},
                                "locations": {
                                    "type": "array",
                                    "minItems": 1,
                                    "maxItems": 1,
                                    "items": {
                                        "type": "object",
                                        "required": ["physicalLocation"],
                                        "properties": {
                                            "physicalLocation": {
                                                "type": "object",
                                                "required": ["artifactLocation", "region"],
                                                "properties": {
                                                    "artifactLocation": {
                                                        "type": "object",
                                                        "required": ["uri"],
                                                        "properties": {
                                                            "uri": {"type": "string"},
                                                            "uriBaseId": {"type": "string"},
                                                        },
                                                    },
                                                    "region": {
                                                        "type": "object",
                                                        "required": ["startLine"],
                                                        "properties": {
                                                            "startLine": {
                                                                "type": "integer",
                                                                "minimum": 1,
                                                            }
                                                        },
                                                    },
                                                },
                                            },
                                            "logicalLocations": {
                                                "type": "array",
                                                "items": {
                                                    "type": "object",
                                                    "properties": {
                                                        "fullyQualifiedName": {"type": "string"},
                                                        "kind": {"type": "string"},
                                                    },
                                                },
                                            },
                                        },
                                    },
                                },
                                "partialFingerprints": {
                                    "type": "object",
                                    "additionalProperties": {"type": "string"},
                                },
                                "properties": {"type": "object"},
                            },
                        },
                    },
                },
            },
        },
    },
}

RULES: list[dict[str, Any]] = [
    {
        "id": "HF201",
        "name": "sharpness-beyond-stability",
        "severity": "error",
        "summary": "Curvature exceeds the optimizer's stability threshold.",
        "rationale": "When λ_max · lr > 2 gradient descent **diverges** along the top eigenvector.",
        "category": "curvature",
        "help_uri": "https://github.com/hfault/hfault/blob/main/docs/rules.md#hf201",
    },
    {
        "id": "HF010",
        "name": "dead-component",
        "severity": "warning",
        "summary": "A component receives no gradient.",
        "rationale": "Its parameters never change, so it contributes nothing to training.",
    },
    {
        "id": "HF300",
        "name": "attention-entropy-collapse",
        "severity": "info",
        "summary": "Attention weights collapse to one token.",
        "rationale": "Low entropy in the attention distribution often precedes instability.",
    },
]


def _report(script: str, model_path: str) -> dict[str, Any]:
    """A crashed run with an error, a warning without location, an info, and a rule that is
    missing from the catalogue."""
    return {
        "schema_version": "1.0",
        "tool": {"name": "hfault", "version": "0.1.0"},
        "run": {
            "script": script,
            "argv": ["--epochs", "3"],
            "status": "crashed",
            "error": {"type": "RuntimeError", "message": "CUDA error: out of memory"},
        },
        "findings": [
            {
                "rule": "HF201",
                "name": "sharpness-beyond-stability",
                "severity": "error",
                "rank": 1,
                "score": 3.2,
                "component": "encoder.layers.0.self_attn.q_proj",
                "step": 40,
                "message": "q_proj is 3.2x past the stability threshold.",
                "evidence": {
                    "lambda_max": 812.5,
                    "lr": 0.01,
                    "ratio": float("inf"),
                    "trace_se": float("nan"),
                    "history": [1.0, float("-inf")],
                },
                "fix": {
                    "summary": "Lower the learning rate to 2.4e-3.",
                    "values": {"lr": 0.0024},
                    "snippet": "optimizer = torch.optim.Adam(model.parameters(), lr=2.4e-3)",
                },
                "location": {"path": model_path, "line": 17},
                "fingerprint": "a1b2c3d4e5f60718",
                "related": ["encoder.layers.0.self_attn.k_proj"],
            },
            {
                "rule": "HF010",
                "name": "dead-component",
                "severity": "warning",
                "rank": 2,
                "score": 1.0,
                "component": "decoder.head",
                "step": None,
                "message": "decoder.head received no gradient.",
                "evidence": {"grad_norm": 0.0},
                "fix": None,
                "location": None,
                "fingerprint": "0f0e0d0c0b0a0908",
            },
            {
                "rule": "HF999",
                "name": "user-rule",
                "severity": "error",
                "rank": 3,
                "score": 0.5,
                "component": None,
                "step": 12,
                "message": "A rule from a user file fired.",
                "evidence": {},
                "fix": None,
                "location": {"path": script, "line": 3},
                "fingerprint": "ffee",
            },
            {
                "rule": "HF300",
                "name": "attention-entropy-collapse",
                "severity": "info",
                "rank": 4,
                "score": 0.1,
                "component": "encoder.layers.1.self_attn",
                "step": 80,
                "message": "Attention entropy fell to 0.02 nats.",
                "evidence": {"entropy": 0.02},
                "fix": None,
                "location": {"path": script, "line": 0},
                "fingerprint": "1234",
            },
        ],
    }


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory holding the training script and a model module."""
    (tmp_path / "models").mkdir()
    (tmp_path / "train.py").write_text("print('train')\n")
    (tmp_path / "models" / "net.py").write_text("class Net: ...\n")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _sarif(project: Path, model_path: str | None = None) -> dict[str, Any]:
    script = str(project / "train.py")
    return to_sarif(_report(script, model_path or str(project / "models" / "net.py")), RULES)


def _results(sarif: dict[str, Any]) -> list[dict[str, Any]]:
    return sarif["runs"][0]["results"]


def _artifact(result: dict[str, Any]) -> dict[str, Any]:
    return result["locations"][0]["physicalLocation"]["artifactLocation"]


def test_log_validates_against_the_sarif_fragment(project: Path) -> None:
    sarif = _sarif(project)
    jsonschema.validate(sarif, SARIF_FRAGMENT, format_checker=jsonschema.FormatChecker())
    assert sarif["$schema"] == "https://json.schemastore.org/sarif-2.1.0.json"
    assert sarif["version"] == "2.1.0"
    driver = sarif["runs"][0]["tool"]["driver"]
    assert (driver["name"], driver["version"]) == ("hfault", "0.1.0")
    assert driver["informationUri"] == "https://github.com/hfault/hfault"
    assert len(_results(sarif)) == 4


def test_the_fragment_rejects_what_github_would() -> None:
    """The schema is not vacuous: a result without a location or a rank out of range fails."""
    bad = {"version": "2.1.0", "runs": [{"tool": {"driver": {"name": "x"}}, "results": [
        {"ruleId": "A", "message": {"text": "m"}, "locations": []}]}]}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, SARIF_FRAGMENT)
    bad["runs"][0]["results"][0]["locations"] = [{"physicalLocation": {
        "artifactLocation": {"uri": "a.py"}, "region": {"startLine": 0}}}]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, SARIF_FRAGMENT)


def test_rule_descriptors_and_rule_index(project: Path) -> None:
    sarif = _sarif(project)
    rules = sarif["runs"][0]["tool"]["driver"]["rules"]
    assert [r["id"] for r in rules] == ["HF201", "HF010", "HF300", "HF999"]
    for result in _results(sarif):
        assert rules[result["ruleIndex"]]["id"] == result["ruleId"]
    hf201 = rules[0]
    assert hf201["name"] == "sharpness-beyond-stability"
    assert hf201["shortDescription"]["text"] == RULES[0]["summary"]
    assert hf201["fullDescription"]["text"] == RULES[0]["rationale"]
    assert RULES[0]["rationale"] in hf201["help"]["text"]
    assert RULES[0]["help_uri"] in hf201["help"]["markdown"]
    assert hf201["helpUri"] == RULES[0]["help_uri"]
    assert hf201["defaultConfiguration"]["level"] == "error"
    assert hf201["properties"]["tags"] == ["ml", "training", "curvature"]
    assert rules[2]["defaultConfiguration"]["level"] == "note"
    # A rule that fired but is not in the catalogue gets a minimal descriptor.
    assert rules[3]["name"] == "user-rule"
    assert rules[3]["defaultConfiguration"]["level"] == "error"


def test_levels_messages_fingerprints_and_properties(project: Path) -> None:
    first, second, third, fourth = _results(_sarif(project))
    assert [r["level"] for r in (first, second, third, fourth)] == [
        "error", "warning", "error", "note"]
    assert first["message"]["text"] == (
        "q_proj is 3.2x past the stability threshold. Fix: Lower the learning rate to 2.4e-3."
    )
    assert second["message"]["text"] == "decoder.head received no gradient."
    assert first["partialFingerprints"] == {"hfault/v1": "a1b2c3d4e5f60718"}
    assert first["properties"]["component"] == "encoder.layers.0.self_attn.q_proj"
    assert first["properties"]["step"] == 40
    assert first["properties"]["score"] == 3.2
    assert first["properties"]["evidence"]["lambda_max"] == 812.5
    assert first["properties"]["related"] == ["encoder.layers.0.self_attn.k_proj"]


def test_rank_follows_severity_then_report_order(project: Path) -> None:
    ranks = [r["rank"] for r in _results(_sarif(project))]
    # errors (rank 1 and 3) fill 70–100, the one warning 40–70, the one info 10–40
    assert ranks == [100.0, 70.0, 85.0, 40.0]
    assert sarif_rank("error", 2, 3) == 80.0
    assert sarif_rank("info", 0, 1) < sarif_rank("warning", 4, 5) < sarif_rank("error", 9, 10)


def test_paths_inside_cwd_are_relative_to_srcroot(project: Path) -> None:
    sarif = _sarif(project)
    first, second, _, fourth = _results(sarif)
    assert _artifact(first) == {"uri": "models/net.py", "uriBaseId": "%SRCROOT%"}
    assert first["locations"][0]["physicalLocation"]["region"] == {"startLine": 17}
    # No location: the training script, line 1.
    assert _artifact(second) == {"uri": "train.py", "uriBaseId": "%SRCROOT%"}
    assert second["locations"][0]["physicalLocation"]["region"] == {"startLine": 1}
    # A line that is not ≥ 1 is clamped to 1.
    assert fourth["locations"][0]["physicalLocation"]["region"] == {"startLine": 1}
    root = sarif["runs"][0]["originalUriBaseIds"]["%SRCROOT%"]["uri"]
    assert root == Path.cwd().as_uri() + "/"


def test_relative_input_paths_resolve_against_cwd(project: Path) -> None:
    report = _report("train.py", "models/../models/net.py")
    first = _results(to_sarif(report, RULES))[0]
    assert _artifact(first) == {"uri": "models/net.py", "uriBaseId": "%SRCROOT%"}


def test_paths_outside_cwd_are_absolute_file_uris(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    elsewhere = tmp_path / "site packages" / "lib" / "model.py"
    monkeypatch.chdir(work)
    sarif = to_sarif(_report(str(tmp_path / "train.py"), str(elsewhere)), RULES)
    first, second = _results(sarif)[:2]
    assert _artifact(first) == {"uri": elsewhere.as_uri()}
    assert "%20" in _artifact(first)["uri"]
    assert _artifact(second) == {"uri": (tmp_path / "train.py").as_uri()}
    assert "originalUriBaseIds" not in sarif["runs"][0]


def test_logical_location_only_with_a_component(project: Path) -> None:
    first, _, third, _ = _results(_sarif(project))
    assert first["locations"][0]["logicalLocations"] == [
        {"fullyQualifiedName": "encoder.layers.0.self_attn.q_proj", "kind": "member"}
    ]
    assert "logicalLocations" not in third["locations"][0]


def test_crashed_run_is_an_unsuccessful_invocation(project: Path) -> None:
    (invocation,) = _sarif(project)["runs"][0]["invocations"]
    assert invocation["executionSuccessful"] is False
    assert invocation["toolExecutionNotifications"] == [
        {"level": "error", "message": {"text": "RuntimeError: CUDA error: out of memory"}}
    ]


@pytest.mark.parametrize("status", ["completed", "stopped"])
def test_completed_or_stopped_run_is_successful(project: Path, status: str) -> None:
    report = _report("train.py", "train.py")
    report["run"].update(status=status, error=None)
    (invocation,) = to_sarif(report, RULES)["runs"][0]["invocations"]
    assert invocation["executionSuccessful"] is True
    assert "toolExecutionNotifications" not in invocation


def test_output_is_strict_json_with_non_finite_evidence_as_strings(project: Path) -> None:
    sarif = _sarif(project)
    text = json.dumps(sarif, allow_nan=False)
    evidence = json.loads(text)["runs"][0]["results"][0]["properties"]["evidence"]
    assert evidence["ratio"] == "inf"
    assert evidence["trace_se"] == "nan"
    assert evidence["history"] == [1.0, "-inf"]


def test_no_findings_still_lists_the_rules(project: Path) -> None:
    report = _report("train.py", "train.py")
    report["findings"] = []
    sarif = to_sarif(report, RULES)
    assert sarif["runs"][0]["results"] == []
    assert len(sarif["runs"][0]["tool"]["driver"]["rules"]) == 3
    jsonschema.validate(sarif, SARIF_FRAGMENT)


def test_write_sarif_writes_indented_json(project: Path) -> None:
    out = project / "hfault.sarif"
    report = _report(str(project / "train.py"), str(project / "models" / "net.py"))
    write_sarif(report, RULES, out)
    text = out.read_text()
    assert text.startswith("{\n  ")
    assert json.loads(text) == to_sarif(report, RULES)
