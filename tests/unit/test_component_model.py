"""Data-driven tests of the component model: cases live in fixtures/component_model_cases.yml."""

from pathlib import Path

import pytest
import yaml
from ansible_collections.kernelfence.isolation.plugins.module_utils.component_model import (
    ModelError,
    directories,
    normalize_components,
    wrapper_capability_problems,
)
from ansible_collections.kernelfence.isolation.plugins.module_utils.hardening import wrapper_argv

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


def _spec_fields(options):
    """The spec's options as the model's FIELDS shape (list of dicts with options -> 'x[]')."""
    out = {}
    for key, opt in options.items():
        sub = _spec_fields(opt["options"]) if "options" in opt else None
        out[f"{key}[]" if sub is not None and opt.get("type") == "list" else key] = sub
    return out


def test_model_fields_are_the_argument_spec_fields():
    """The fields the model accepts are exactly those the role's argument spec documents."""
    from ansible_collections.kernelfence.isolation.plugins.module_utils.component_model import (
        FIELDS,
    )
    repo = Path(__file__).resolve().parents[2]
    spec = yaml.safe_load((repo / "roles/component_model/meta/argument_specs.yml").read_text())
    options = spec["argument_specs"]["preflight"]["options"]["kernelfence_components"]["options"]
    assert _spec_fields(options) == FIELDS


def _example_records():
    repo = Path(__file__).resolve().parents[2]
    data = yaml.safe_load(
        (repo / "inventory/example/group_vars/kernelfence/components.yml").read_text())
    return normalize_components(data["kernelfence_components"])


def test_restart_goes_to_the_unit_that_runs_the_component():
    """verified_binary's handler: the operator's own unit for a component that names one
    (advisory_sync), kf-<name>.service otherwise, nothing for a component without a service."""
    from ansible_collections.kernelfence.isolation.plugins.module_utils.component_model import (
        restart_targets,
        service_unit,
    )
    records = {r["name"]: r for r in _example_records()}
    assert service_unit(records["advisory_sync"]) == "agent-advisory-sync.service"
    assert service_unit(records["executor"]) == "kf-executor.service"
    plain = normalize_components([{"name": "data_only", "profile": "custom"}])[0]
    assert service_unit(plain) is None
    every = [*records.values(), plain]
    assert restart_targets(every, ["executor", "advisory_sync", "data_only"]) == [
        "ours:kf-executor.service", "own:agent-advisory-sync.service"]
    assert restart_targets(every, ["model_backend"]) == ["ours:kf-model_backend.service"]
    assert restart_targets(every, []) == []


# `systemctl show --property=Id,LoadState -- UNIT...` prints one block per unit, in this form.
SHOW = ("Id=agent-advisory-sync.service\nLoadState=loaded\n\n"
        "Id=agent-missing.service\nLoadState=not-found\n")


def test_a_named_unit_that_does_not_exist_is_refused_naming_the_component():
    from ansible_collections.kernelfence.isolation.plugins.module_utils.component_model import (
        missing_named_units,
        units_not_loaded,
    )
    assert units_not_loaded(SHOW) == {"agent-missing.service": "not-found"}
    records = normalize_components([
        {"name": "advisory_sync", "profile": "custom", "unit": "agent-advisory-sync.service",
         "command": "/usr/bin/true", "artifacts": [
             {"name": "t", "src": "/srv/t", "key": "/srv/k.pub", "signature": "/srv/t.sig"}]},
        {"name": "reporter", "profile": "custom", "unit": "agent-missing.service",
         "command": "/usr/bin/true", "artifacts": [
             {"name": "t", "src": "/srv/t", "key": "/srv/k.pub", "signature": "/srv/t.sig"}]}])
    message = missing_named_units(records, SHOW)
    assert message.startswith("kernelfence_components[reporter].unit: agent-missing.service "
                              "does not exist on this host (LoadState=not-found)"), message
    assert "advisory_sync" not in message
    assert "Fix: install that unit first, or remove `unit`" in message
    assert missing_named_units(records, SHOW.replace("not-found", "loaded")) == ""


def test_identity_requirements_and_the_message_for_what_is_missing():
    from ansible_collections.kernelfence.isolation.plugins.module_utils.component_model import (
        identity_requirements,
        missing_identities,
    )
    records = _example_records()
    flat = identity_requirements(records)
    triples = [flat[i:i + 3] for i in range(0, len(flat), 3)]
    assert ["executor", "user", "kf-executor"] in triples
    assert ["executor", "group", "kf-executor-clients"] in triples
    assert ["executor", "directory", "/etc/kernelfence/executor"] in triples
    assert ["-", "directory", "/var/lib/kernelfence"] in triples
    message = missing_identities("executor user kf-executor\nexecutor group kf-executor\n",
                                 "kernelfence.isolation.component_unit")
    assert message == (
        "kernelfence.isolation.component_unit: the component identities it needs do not exist "
        "on this host (kernelfence_components[executor]: user kf-executor, group kf-executor). "
        "Nothing was changed. Fix: run the kernelfence.isolation.component_identity role first, "
        "with the same kernelfence_components (before kernelfence.isolation.component_unit in "
        "the same play, or use playbooks/site.yml)")


def test_capabilities_on_a_systemd_without_private_pids_are_refused_naming_the_component():
    """Before 257 bubblewrap runs every workload with --cap-drop ALL (hardening.wrapper_argv):
    a granted capability would be void there, so the preflight refuses it (review finding)."""
    records = normalize_components([
        {"name": "binder", "profile": "custom", "command": "/usr/bin/true",
         "capabilities": ["CAP_NET_BIND_SERVICE"]},
        {"name": "plain", "profile": "custom", "command": "/usr/bin/true"}])
    problems = wrapper_capability_problems(records, 252)
    assert problems == [
        "kernelfence_components[binder].capabilities: CAP_NET_BIND_SERVICE cannot be granted on "
        "systemd 252: the bubblewrap wrapper that gives the component its PID namespace there "
        "drops every capability (and refuses ambient ones). Fix: run the component on systemd "
        ">= 257 (Debian 13), or serve the privileged operation from a unit outside the model"]
    assert "--cap-drop" in wrapper_argv() and "ALL" in wrapper_argv()
    assert wrapper_capability_problems(records, 257) == []  # native PrivatePIDs=, no wrapper
    assert wrapper_capability_problems(records[1:], 252) == []  # nothing granted
