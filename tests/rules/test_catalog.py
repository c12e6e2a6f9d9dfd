"""Loading rules and configuration (hfault.rules.catalog and hfault.rules.rule)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from hfault.rules.catalog import (
    Config,
    builtin_rules_dir,
    find_pyproject,
    load_config,
    load_rules,
    split_codes,
)
from hfault.rules.rule import RuleError, load_rule

REPO_ROOT = Path(__file__).resolve().parents[2]
RULE_FILES = sorted((REPO_ROOT / "rules").glob("HF*.toml"))
BUILTIN_IDS = sorted(tomllib.loads(p.read_text())["id"] for p in RULE_FILES)

VALID = """\
id = "HF901"
name = "grad-rms-above-limit"
scope = "component"
severity = "warning"
category = "gradients"
summary = "A component's RMS gradient exceeds a fixed limit."
rationale = "A test rule."
condition = "any(grad_rms > limit)"
message = "{component} has an RMS gradient of {value:.3g}, above {limit:g}"

[params.limit]
default = 1.0
doc = "largest acceptable RMS gradient"

[evidence]
value = "max(grad_rms)"
"""


FIX_WITH_BAD_SUMMARY = """\
value = "max(grad_rms)"

[[fix]]
summary = "Lower the learning rate of {component} to {nope}."
"""


def line_with(text: str, fragment: str) -> int:
    """1-based number of the only line containing ``fragment``."""
    hits = [i for i, ln in enumerate(text.splitlines(), start=1) if fragment in ln]
    assert len(hits) == 1, (fragment, hits)
    return hits[0]


def write(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def ids(rules: list) -> list[str]:  # type: ignore[type-arg]
    return [r.id for r in rules]


# ------------------------------------------------------------------ built-in rules
def test_builtin_rules_all_load() -> None:
    assert builtin_rules_dir() == REPO_ROOT / "rules"
    assert len(RULE_FILES) >= 10
    rules = load_rules()
    assert ids(rules) == BUILTIN_IDS  # every file, sorted by id
    assert len(set(ids(rules))) == len(rules)


@pytest.mark.parametrize("path", RULE_FILES, ids=[p.stem for p in RULE_FILES])
def test_builtin_rule_id_name_and_file_name(path: Path) -> None:
    rule = load_rule(path)
    assert re.fullmatch(r"HF\d{3}", rule.id), rule.id
    assert re.fullmatch(r"[a-z][a-z0-9]*(-[a-z0-9]+)*", rule.name), rule.name
    assert path.name.startswith(f"{rule.id}-"), path.name
    assert rule.path == path
    assert rule.overrides == {}
    assert all(p.doc for p in rule.params.values())


def test_builtin_names_are_unique() -> None:
    names = [r.name for r in load_rules()]
    assert len(set(names)) == len(names)


# ------------------------------------------------------------------ user rule folders
def test_user_rule_folder_adds_a_rule(tmp_path: Path) -> None:
    path = write(tmp_path / "mine", "HF901-grad-rms-above-limit.toml", VALID)
    rules = load_rules(extra_dirs=[tmp_path / "mine"])
    assert ids(rules) == sorted([*BUILTIN_IDS, "HF901"])
    rule = next(r for r in rules if r.id == "HF901")
    assert rule.path == path
    assert rule.scope == "component"
    assert rule.severity == "warning"
    assert rule.param_values() == {"limit": 1.0}
    assert rule.condition.names == frozenset({"grad_rms", "limit"})
    assert list(rule.evidence) == ["value"]


def test_config_rule_folder_is_relative_to_the_config(tmp_path: Path) -> None:
    write(tmp_path / "proj" / "ci" / "rules", "HF901-grad-rms-above-limit.toml", VALID)
    pyproject = write(tmp_path / "proj", "pyproject.toml", """\
[tool.hfault]
rules = ["ci/rules"]
select = ["HF901"]

[tool.hfault.params.HF901]
limit = 2.5
""")
    config = load_config(pyproject)
    assert config.rule_dirs == ((tmp_path / "proj" / "ci" / "rules").resolve(),)
    rules = load_rules(config)
    assert ids(rules) == ["HF901"]
    assert rules[0].param_values() == {"limit": 2.5}


def test_missing_rule_folder(tmp_path: Path) -> None:
    with pytest.raises(RuleError, match="rule folder not found") as info:
        load_rules(extra_dirs=[tmp_path / "nope"])
    assert info.value.path == tmp_path / "nope"


def test_duplicate_id_names_both_files(tmp_path: Path) -> None:
    text = VALID.replace('id = "HF901"', 'id = "HF201"')
    dup = write(tmp_path / "mine", "HF201-copy.toml", text)
    with pytest.raises(RuleError) as info:
        load_rules(extra_dirs=[tmp_path / "mine"])
    err = info.value
    original = REPO_ROOT / "rules" / "HF201-sharpness-beyond-stability.toml"
    assert err.path == dup
    assert err.line == 1
    assert str(err) == f"{dup}:1: rule id HF201 is already defined in {original}"


def test_duplicate_id_across_user_folders(tmp_path: Path) -> None:
    first = write(tmp_path / "a", "HF901-a.toml", VALID)
    second = write(tmp_path / "b", "HF901-b.toml", VALID.replace("grad-rms-above", "other"))
    with pytest.raises(RuleError) as info:
        load_rules(extra_dirs=[tmp_path / "a", tmp_path / "b"])
    assert str(second) in str(info.value)
    assert str(first) in str(info.value)
    assert info.value.line == 1


# ------------------------------------------------------------------ malformed rule files
def malformed(tmp_path: Path, old: str, new: str) -> tuple[Path, str]:
    assert old in VALID, old
    text = VALID.replace(old, new)
    return write(tmp_path / "bad", "HF901-bad.toml", text), text


@pytest.mark.parametrize(
    ("old", "new", "at", "problem"),
    [
        ('id = "HF901"', 'id = "HF9001"', "id =", "id 'HF9001' must look like HF123"),
        ('id = "HF901"', 'id = "XX901"', "id =", "id 'XX901' must look like HF123"),
        ('name = "grad-rms-above-limit"', 'name = "Grad_RMS"', "name =",
         "name 'Grad_RMS' must be lower-case words joined by '-'"),
        ('severity = "warning"', 'severity = "fatal"', "severity =",
         "'severity' must be one of error, warning, info, not 'fatal'"),
        ('scope = "component"', 'scope = "model"', "scope =",
         "'scope' must be one of run, component, edge, attention, timeline, not 'model'"),
        ('rationale = "A test rule."', 'rationale = "A test rule."\ncolour = "red"', "colour =",
         "unknown key 'colour'"),
        ("any(grad_rms > limit)", "any(grad_rmss > limit)", "condition =",
         "condition: unknown name(s): grad_rmss"),
        ("any(grad_rms > limit)", "grad_rms.__class__", "condition =",
         "condition: Attribute is not allowed in a rule expression"),
        ("any(grad_rms > limit)", "any(grad_rms[0] > limit)", "condition =",
         "condition: Subscript is not allowed in a rule expression"),
        ("any(grad_rms > limit)", "__import__('os')", "condition =",
         "condition: unknown function '__import__'"),
        ('value = "max(grad_rms)"', 'value = "max(grad_rms)"\nlr = "max(grad_rms)"', "lr =",
         "evidence 'lr' would hide the feature or parameter of that name; choose another name"),
        ('value = "max(grad_rms)"', 'value = "max(grad_rms)"\nlimit = "2"', 'limit = "2"',
         "evidence 'limit' would hide the feature or parameter of that name"),
        ('value = "max(grad_rms)"', 'value = "max(grad_rms.real)"', "value =",
         "value: Attribute is not allowed"),
        ("above {limit:g}", "above {limt:g}", "message =",
         "message: unknown placeholder {limt}"),
        ('value = "max(grad_rms)"',
         'value = "max(grad_rms)"\n\n[[fix]]\nkind = "lower_lr"\nsummary = "Lower it."',
         'kind = "lower_lr"', "a lower_lr fix needs a 'factor' expression"),
        ('value = "max(grad_rms)"',
         'value = "max(grad_rms)"\n\n[[fix]]\nkind = "shout"\nsummary = "Lower it."',
         'kind = "shout"', "fix kind 'shout' must be one of manual, lower_lr, clip_grad"),
        ('value = "max(grad_rms)"', 'value = "max(grad_rms)"\n\n[escalate]\nfatal = "True"',
         "fatal =", "escalate key 'fatal' is not a severity"),
        ('rationale = "A test rule."', 'rationale = "A test rule."\nreferences = "a paper"',
         "references =", "'references' must be a list of strings"),
        ('category = "gradients"', "category = 3", "category =", "'category' must be a string"),
    ],
)
def test_malformed_rule_file(tmp_path: Path, old: str, new: str, at: str, problem: str) -> None:
    path, text = malformed(tmp_path, old, new)
    line = line_with(text, at)
    with pytest.raises(RuleError) as info:
        load_rule(path)
    err = info.value
    assert err.path == path
    assert err.line == line, str(err)
    assert problem in err.problem
    assert str(err).startswith(f"{path}:{line}: ")


def test_unknown_placeholder_in_a_fix(tmp_path: Path) -> None:
    path, _ = malformed(tmp_path, 'value = "max(grad_rms)"', FIX_WITH_BAD_SUMMARY)
    with pytest.raises(RuleError) as info:
        load_rule(path)
    assert info.value.path == path
    assert info.value.problem == "summary: unknown placeholder {nope}"


def test_unknown_placeholder_in_a_fix_gives_the_fix_line(tmp_path: Path) -> None:
    path, text = malformed(tmp_path, 'value = "max(grad_rms)"', FIX_WITH_BAD_SUMMARY)
    with pytest.raises(RuleError) as info:
        load_rule(path)
    assert info.value.line == line_with(text, "{nope}")


def test_malformed_rule_stops_load_rules(tmp_path: Path) -> None:
    path, text = malformed(tmp_path, 'severity = "warning"', 'severity = "fatal"')
    with pytest.raises(RuleError) as info:
        load_rules(extra_dirs=[path.parent])
    assert str(info.value).startswith(f"{path}:{line_with(text, 'severity =')}: ")


def test_missing_required_key(tmp_path: Path) -> None:
    summary = 'summary = "A component\'s RMS gradient exceeds a fixed limit."\n'
    path, _ = malformed(tmp_path, summary, "")
    with pytest.raises(RuleError, match="missing required key 'summary'") as info:
        load_rule(path)
    assert info.value.path.name == "HF901-bad.toml"


def test_invalid_toml_names_the_file(tmp_path: Path) -> None:
    path, _ = malformed(tmp_path, 'category = "gradients"', "category = gradients")
    with pytest.raises(RuleError) as info:
        load_rule(path)
    assert info.value.path == path
    assert info.value.problem.startswith("invalid TOML: ")
    assert str(info.value).startswith(str(path))


def test_invalid_toml_gives_the_line(tmp_path: Path) -> None:
    path, text = malformed(tmp_path, 'category = "gradients"', "category = gradients")
    with pytest.raises(RuleError) as info:
        load_rule(path)
    assert info.value.line == line_with(text, "category =")


def test_parameter_without_doc_is_an_error(tmp_path: Path) -> None:
    path, _ = malformed(tmp_path, 'doc = "largest acceptable RMS gradient"\n', "")
    with pytest.raises(RuleError) as info:
        load_rule(path)
    assert info.value.path == path
    assert info.value.problem == "parameter 'limit' needs 'default' and 'doc'"


def test_parameter_without_doc_gives_the_line(tmp_path: Path) -> None:
    path, text = malformed(tmp_path, 'doc = "largest acceptable RMS gradient"\n', "")
    with pytest.raises(RuleError) as info:
        load_rule(path)
    assert info.value.line == line_with(text, "[params.limit]")


# ------------------------------------------------------------------ configuration
def pyproject(folder: Path, body: str) -> Path:
    return write(folder, "pyproject.toml", '[project]\nname = "demo"\n\n' + body)


def test_param_override_by_id(tmp_path: Path) -> None:
    config = load_config(pyproject(tmp_path, "[tool.hfault.params.HF201]\nratio = 2.0\n"))
    rules = {r.id: r for r in load_rules(config)}
    assert rules["HF201"].param_values()["ratio"] == 2.0
    assert rules["HF201"].param_values()["sustain"] == 3  # the others keep their defaults
    assert rules["HF201"].overrides == {"ratio": 2.0}
    assert all(r.overrides == {} for r in rules.values() if r.id != "HF201")
    default = next(r for r in load_rules() if r.id == "HF201")
    assert default.param_values()["ratio"] == 1.5


def test_param_override_by_name(tmp_path: Path) -> None:
    config = load_config(pyproject(tmp_path, """\
[tool.hfault.params.sharpness-beyond-stability]
ratio = 2.5
sustain = 4
"""))
    rule = next(r for r in load_rules(config) if r.id == "HF201")
    assert rule.param_values()["ratio"] == 2.5
    assert rule.param_values()["sustain"] == 4


def test_param_override_inline_table(tmp_path: Path) -> None:
    config = load_config(pyproject(tmp_path, "[tool.hfault.params]\nHF012 = { min_steps = 40 }\n"))
    rule = next(r for r in load_rules(config) if r.id == "HF012")
    assert rule.param_values()["min_steps"] == 40


def test_an_int_may_set_a_float_parameter(tmp_path: Path) -> None:
    config = load_config(pyproject(tmp_path, "[tool.hfault.params.HF201]\nratio = 2\n"))
    rule = next(r for r in load_rules(config) if r.id == "HF201")
    assert rule.param_values()["ratio"] == 2


@pytest.mark.parametrize(
    ("body", "at", "problem"),
    [
        ("[tool.hfault.params.HF999]\nratio = 1.0\n", "[tool.hfault.params.HF999]",
         "params for unknown rule 'HF999'"),
        ("[tool.hfault.params.no-such-rule]\nratio = 1.0\n", "[tool.hfault.params.no-such",
         "params for unknown rule 'no-such-rule'"),
        ("[tool.hfault.params.HF201]\nratoi = 2.0\n", "ratoi =",
         "rule HF201 has no parameter 'ratoi'; it has ratio, sustain, single_ratio, "
         "spike_factor, min_spikes"),
        ('[tool.hfault.params.HF201]\nratio = "high"\n', "ratio =",
         "HF201.ratio must be a float, not 'high'"),
        ("[tool.hfault.params.HF201]\nratio = true\n", "ratio =",
         "HF201.ratio must be a float, not True"),
        ("[tool.hfault.params.HF201]\nsustain = 2.5e0\nratio = [2.0]\n", "ratio =",
         "HF201.ratio must be a float, not [2.0]"),
        ('[tool.hfault]\nselect = ["HF2"]\nselcet = ["HF0"]\n', "selcet =",
         "unknown setting 'selcet'; known: ignore, params, rules, select"),
        ("[tool.hfault]\nselect = 3\n", "select =", "'select' must be a list of strings"),
        ('[tool.hfault]\nignore = ["HF2", 1]\n', "ignore =", "'ignore' must be a list of strings"),
        ("[tool.hfault]\nparams = 1\n", "params =", "'params' must hold one table per rule"),
    ],
)
def test_bad_config(tmp_path: Path, body: str, at: str, problem: str) -> None:
    path = pyproject(tmp_path, body)
    text = path.read_text()
    with pytest.raises(RuleError) as info:
        load_rules(load_config(path))
    err = info.value
    assert err.path == path
    assert err.line == line_with(text, at), str(err)
    assert problem in err.problem
    assert str(err).startswith(f"{path}:{err.line}: ")


def test_bad_param_line_when_two_rules_share_a_param_name(tmp_path: Path) -> None:
    path = pyproject(tmp_path, """\
[tool.hfault.params.HF012]
min_spikes = 4

[tool.hfault.params.HF201]
min_spikes = "many"
""")
    with pytest.raises(RuleError) as info:
        load_rules(load_config(path))
    assert info.value.line == line_with(path.read_text(), 'min_spikes = "many"')


def test_invalid_config_toml(tmp_path: Path) -> None:
    path = write(tmp_path, "pyproject.toml", "[tool.hfault\nselect = 1\n")
    with pytest.raises(RuleError) as info:
        load_config(path)
    assert info.value.path == path
    assert info.value.problem.startswith("invalid TOML: ")


def test_pyproject_without_hfault_table_is_empty(tmp_path: Path) -> None:
    path = pyproject(tmp_path, '[tool.ruff]\nselect = "not ours"\n')
    config = load_config(path)
    assert (config.select, config.ignore, config.rule_dirs, dict(config.params)) == (
        (), (), (), {}
    )
    assert ids(load_rules(config)) == BUILTIN_IDS


def test_standalone_config_with_top_level_keys(tmp_path: Path) -> None:
    path = write(tmp_path / "ci", "hfault.toml", """\
select = ["HF2"]
ignore = "HF206"

[params.HF201]
ratio = 3.0
""")
    config = load_config(path)
    assert config.select == ("HF2",)
    assert config.ignore == ("HF206",)
    assert config.source == path
    rules = load_rules(config)
    assert ids(rules) == [i for i in BUILTIN_IDS if i.startswith("HF2") and i != "HF206"]
    assert next(r for r in rules if r.id == "HF201").param_values()["ratio"] == 3.0


def test_standalone_config_errors_name_it(tmp_path: Path) -> None:
    path = write(tmp_path, "hfault.toml", "select = []\n\n[params.HF998]\nratio = 1.0\n")
    with pytest.raises(RuleError) as info:
        load_rules(load_config(path))
    assert str(info.value) == f"{path}:3: params for unknown rule 'HF998'"


# ------------------------------------------------------------------ select / ignore
def test_select_prefix() -> None:
    chosen = ids(load_rules(select=["HF2"]))
    assert chosen == [i for i in BUILTIN_IDS if i.startswith("HF2")]
    assert len(chosen) >= 2


def test_select_ids_names_and_lower_case() -> None:
    assert ids(load_rules(select=["HF001", "loss-oscillation"])) == ["HF001", "HF012"]
    assert ids(load_rules(select=["hf01"])) == [i for i in BUILTIN_IDS if i.startswith("HF01")]


def test_ignore() -> None:
    chosen = ids(load_rules(ignore=["HF0", "HF201"]))
    assert chosen == [i for i in BUILTIN_IDS if not i.startswith("HF0") and i != "HF201"]
    assert ids(load_rules(select=["HF2"], ignore=["HF20"])) == [
        i for i in BUILTIN_IDS if i.startswith("HF2") and not i.startswith("HF20")
    ]


def test_all() -> None:
    assert ids(load_rules(select=["ALL"])) == BUILTIN_IDS
    assert ids(load_rules(select=["ALL"], ignore=["HF2"])) == [
        i for i in BUILTIN_IDS if not i.startswith("HF2")
    ]


def test_command_line_select_overrides_config_select(tmp_path: Path) -> None:
    body = '[tool.hfault]\nselect = ["HF0"]\nignore = ["HF202"]\n'
    config = load_config(pyproject(tmp_path, body))
    assert ids(load_rules(config)) == [i for i in BUILTIN_IDS if i.startswith("HF0")]
    both = ids(load_rules(config, select=["HF2"], ignore=["HF201"]))
    # --select replaces the config's select; --ignore adds to the config's ignore
    assert both == [i for i in BUILTIN_IDS if i.startswith("HF2") and i not in ("HF201", "HF202")]


@pytest.mark.parametrize(("select", "ignore", "code"), [
    (["HF9"], [], "HF9"),
    (["HF2", "no-such-rule"], [], "no-such-rule"),
    ([], ["HF77"], "HF77"),
])
def test_a_code_matching_nothing_is_an_error(select: list[str], ignore: list[str],
                                             code: str) -> None:
    with pytest.raises(RuleError, match=re.escape(f"{code!r} matches no rule")):
        load_rules(select=select, ignore=ignore)


def test_a_config_code_matching_nothing_names_the_config(tmp_path: Path) -> None:
    path = pyproject(tmp_path, '[tool.hfault]\nselect = ["HF2", "HF8"]\n')
    with pytest.raises(RuleError) as info:
        load_rules(load_config(path))
    assert info.value.path == path
    assert info.value.problem == "'HF8' matches no rule"


def test_split_codes() -> None:
    assert split_codes(["HF2,HF001", "HF3"]) == ("HF2", "HF001", "HF3")
    assert split_codes([" HF2 , ,HF001,", ""]) == ("HF2", "HF001")
    assert split_codes([]) == ()


# ------------------------------------------------------------------ finding pyproject.toml
def test_find_pyproject_takes_the_nearest_with_a_hfault_table(tmp_path: Path) -> None:
    top = write(tmp_path / "a", "pyproject.toml", '[tool.hfault]\nselect = ["HF2"]\n')
    write(tmp_path / "a" / "b", "pyproject.toml", '[project]\nname = "inner"\n')  # not ours
    write(tmp_path / "a" / "b" / "c", "pyproject.toml", "[project\nbroken")  # someone else's
    nested = tmp_path / "a" / "b" / "c" / "d"
    nested.mkdir(parents=True)
    assert find_pyproject(nested) == top
    assert find_pyproject(tmp_path / "a") == top
    inner = write(tmp_path / "a" / "b" / "c" / "d", "pyproject.toml", "[tool.hfault]\n")
    assert find_pyproject(nested) == inner
    assert load_config(inner) == Config(source=inner, text="[tool.hfault]\n")


def test_a_broken_pyproject_with_our_table_is_reported_not_skipped(tmp_path: Path) -> None:
    write(tmp_path, "pyproject.toml", '[tool.hfault]\nselect = ["HF2"]\n')
    broken = write(tmp_path / "a", "pyproject.toml", '[tool.hfault]\nselect = ["HF0"\n')
    assert find_pyproject(tmp_path / "a") == broken  # not silently the one above
    with pytest.raises(RuleError, match="invalid TOML"):
        load_config(broken)


def test_find_pyproject_none(tmp_path: Path) -> None:
    write(tmp_path / "x", "pyproject.toml", "[tool.other]\nk = 1\n")
    assert find_pyproject(tmp_path / "x") is None


# ------------------------------------------------------------------ packaging
def test_wheel_ships_the_builtin_rules(tmp_path: Path) -> None:
    # Build from a clean copy: building in the checkout would leave build/ and *.egg-info there,
    # and a stale build/lib could hide a rule that is missing from the package data.
    src = tmp_path / "src"
    skip = shutil.ignore_patterns("__pycache__", "*.pyc")
    for folder in ("hfault", "rules"):
        shutil.copytree(REPO_ROOT / folder, src / folder, ignore=skip)
    for name in ("pyproject.toml", "README.md", "LICENSE", "MANIFEST.in", "setup.py", "setup.cfg"):
        if (REPO_ROOT / name).is_file():
            shutil.copy2(REPO_ROOT / name, src / name)
    out = tmp_path / "wheel"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "--no-index", "-w", str(out), str(src)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (wheel,) = out.glob("hfault-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
    shipped = {n for n in names if n.startswith("hfault/builtin_rules/")}
    expected = {f"hfault/builtin_rules/{p.name}" for p in RULE_FILES}
    assert expected <= shipped, sorted(expected - shipped)
    assert "hfault/rules/catalog.py" in names
