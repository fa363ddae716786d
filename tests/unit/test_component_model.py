"""Data-driven tests of the component model: cases live in fixtures/component_model_cases.yml."""

from pathlib import Path

import pytest
import yaml
from ansible_collections.kernelfence.isolation.plugins.module_utils.component_model import (
    ModelError,
    directories,
    normalize_components,
)

CASES = yaml.safe_load((Path(__file__).parent / "fixtures/component_model_cases.yml").read_text())


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_component_model(case):
    if "error" in case:
        with pytest.raises(ModelError) as excinfo:
            normalize_components(case["components"], case.get("roots"))
        assert case["error"] in str(excinfo.value)
        return
    records = {r["name"]: r for r in normalize_components(case["components"], case.get("roots"))}
    for name, fields in case.get("expect", {}).items():
        observed = {key: records[name][key] for key in fields}
        assert observed == fields
    for name, fields in case.get("expect_resources", {}).items():
        observed = {key: records[name]["resources"][key] for key in fields}
        assert observed == fields


def test_example_inventory_is_a_valid_model():
    repo = Path(__file__).resolve().parents[2]
    data = yaml.safe_load(
        (repo / "inventory/example/group_vars/kernelfence/components.yml").read_text())
    records = normalize_components(data["kernelfence_components"])
    profiles = [r["profile"] for r in records]
    assert profiles == ["orchestrator", "executor", "model_backend", "custom"]


def test_directories_are_least_privilege():
    records = normalize_components([{"name": "orchestrator", "profile": "orchestrator",
                                     "state_paths": ["/srv/kernelfence/orch-cache"]}])
    by_path = {d["path"]: d for d in directories(records)}
    assert by_path["/var/lib/kernelfence/orchestrator"] == {
        "path": "/var/lib/kernelfence/orchestrator", "owner": "kf-orchestrator",
        "group": "kf-orchestrator", "mode": "0700", "component": "orchestrator"}
    # Config is root-owned so a compromised component cannot rewrite its own configuration.
    assert by_path["/etc/kernelfence/orchestrator"]["owner"] == "root"
    assert by_path["/srv/kernelfence/orch-cache"]["mode"] == "0700"
    # Only the shared roots are traversable by others; nothing of a component is.
    assert by_path["/var/lib/kernelfence"] == {"path": "/var/lib/kernelfence", "owner": "root",
                                               "group": "root", "mode": "0755", "component": None}
    assert all(d["mode"][-1] == "0" for d in by_path.values() if d["component"])
