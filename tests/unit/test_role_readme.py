"""Every role README carries the options table its meta/argument_specs.yml renders, and the
role defaults agree with the spec (tools/role_readme.py)."""

import shutil
from pathlib import Path

import pytest
import yaml

from tools import role_readme

REPO = Path(__file__).resolve().parents[2]
ROLES = role_readme.role_dirs(REPO / "roles")


@pytest.mark.parametrize("role", ROLES, ids=[r.name for r in ROLES])
def test_readme_matches_argument_specs(role):
    stale = role_readme.stale_readmes([role])
    assert not stale, "\n".join(stale)


@pytest.mark.parametrize("role", ROLES, ids=[r.name for r in ROLES])
def test_defaults_are_documented_with_the_same_value(role):
    drift = role_readme.defaults_drift(role)
    assert not drift, "\n".join(drift)


def test_every_role_is_covered():
    names = {r.name for r in ROLES}
    assert {"component_identity", "component_model", "component_unit", "network_policy",
            "verified_binary"} <= names


@pytest.fixture
def role_copy(tmp_path):
    """A copy of a real role, up to date, to break on purpose."""
    dest = tmp_path / "roles" / "network_policy"
    shutil.copytree(REPO / "roles" / "network_policy", dest)
    assert role_readme.stale_readmes([dest]) == []
    return dest


def test_changed_spec_makes_the_readme_stale_and_names_role_and_command(role_copy):
    spec_file = role_copy / "meta" / "argument_specs.yml"
    spec = yaml.safe_load(spec_file.read_text())
    spec["argument_specs"]["main"]["options"]["network_policy_log_burst"]["description"] = "N."
    spec_file.write_text(yaml.safe_dump(spec))
    stale = role_readme.stale_readmes([role_copy])
    assert stale == ["role network_policy: roles/network_policy/README.md is out of date with "
                     "meta/argument_specs.yml; regenerate: python3 tools/role_readme.py"]
    assert role_readme.main(["--check", str(role_copy)]) == 1
    # Regenerating fixes it and keeps the hand-written text outside the markers.
    intro = (role_copy / "README.md").read_text().split(role_readme.BEGIN)[0]
    assert role_readme.main([str(role_copy)]) == 0
    text = (role_copy / "README.md").read_text()
    assert text.startswith(intro)
    assert "| `network_policy_log_burst` | int |  | `5` | N. |" in text
    assert role_readme.main(["--check", str(role_copy)]) == 0


def test_hand_edit_inside_the_block_is_stale(role_copy):
    readme = role_copy / "README.md"
    readme.write_text(readme.read_text().replace("`6/minute`", "`60/minute`"))
    assert role_readme.stale_readmes([role_copy])


def test_missing_readme_is_stale_and_created_with_title(role_copy):
    (role_copy / "README.md").unlink()
    assert role_readme.stale_readmes([role_copy])
    role_readme.main([str(role_copy)])
    text = (role_copy / "README.md").read_text()
    assert text.startswith("# kernelfence.isolation.network_policy\n")
    assert role_readme.BEGIN in text and role_readme.END in text
    assert role_readme.stale_readmes([role_copy]) == []


def test_readme_without_markers_gets_the_block_appended(role_copy):
    (role_copy / "README.md").write_text("# mine\n\nHand-written.\n")
    role_readme.main([str(role_copy)])
    text = (role_copy / "README.md").read_text()
    assert text.startswith("# mine\n\nHand-written.\n\n## Variables\n\n" + role_readme.BEGIN)
    assert role_readme.stale_readmes([role_copy]) == []


def test_default_that_differs_from_the_spec_is_drift(role_copy):
    defaults = role_copy / "defaults" / "main.yml"
    defaults.write_text(defaults.read_text().replace("network_policy_log_burst: 5",
                                                     "network_policy_log_burst: 7"))
    defaults.write_text(defaults.read_text() + "network_policy_undocumented: 1\n")
    assert role_readme.defaults_drift(role_copy) == [
        "roles/network_policy/defaults/main.yml: network_policy_log_burst is 7 but "
        "meta/argument_specs.yml says 5",
        "roles/network_policy/defaults/main.yml: network_policy_undocumented is not documented in "
        "meta/argument_specs.yml",
    ]


def test_role_without_argument_specs_fails_with_the_path(role_copy):
    (role_copy / "meta" / "argument_specs.yml").unlink()
    with pytest.raises(FileNotFoundError,
                       match=r"network_policy/meta/argument_specs\.yml: missing"):
        role_readme.stale_readmes([role_copy])


SPEC = {"argument_specs": {
    "main": {"short_description": "Demo", "options": {
        "demo_items": {"type": "list", "elements": "dict", "default": [],
                       "description": ["Items; see C(a|b) and I(x) B(y).", "Second."],
                       "options": {
                           "mode": {"type": "str", "choices": ["a", "b"], "default": "a",
                                    "description": "Under O(demo_items)C(/<name>/) or "
                                                   "L(docs,https://example.invalid)."},
                           "sub": {"type": "dict", "options": {
                               "flag": {"type": "bool", "required": True,
                                        "description": "A <flag>."}}}}}}},
    "extra": {"short_description": "Other entry", "options": {}},
}}


def test_rendering_of_nested_options_markup_and_entry_points(tmp_path):
    role = tmp_path / "roles" / "demo"
    (role / "meta").mkdir(parents=True)
    (role / "meta" / "argument_specs.yml").write_text(yaml.safe_dump(SPEC))
    block = role_readme.render_block(role)
    rows = [line for line in block.splitlines() if line.startswith("| `")]
    assert rows == [
        "| `demo_items` | list of dict |  | `[]` | Items; see `a\\|b` and *x* **y**.<br><br>"
        "Second. |",
        "| `demo_items[].mode` | str |  | `a` | Under `demo_items/<name>/` or "
        "[docs](https://example.invalid).<br><br>Choices: `a`, `b`. |",
        "| `demo_items[].sub` | dict |  |  |  |",
        "| `demo_items[].sub.flag` | bool | yes |  | A &lt;flag&gt;. |",
    ]
    assert "### Entry point `extra`" in block
    assert "Use with `tasks_from: extra`" in block
    assert "No options." in block


def test_command_line_names_a_role_without_spec(role_copy, capsys):
    (role_copy / "meta" / "argument_specs.yml").unlink()
    assert role_readme.main([str(role_copy)]) == 2
    assert "network_policy/meta/argument_specs.yml: missing" in capsys.readouterr().err
