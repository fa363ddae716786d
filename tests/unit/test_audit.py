"""The audit: policy from a unit's directives, checks on the recorded /proc tree, reports."""

import json
from pathlib import Path
from xml.etree import ElementTree

import pytest
import yaml
from ansible_collections.kernelfence.isolation.plugins.module_utils.audit import (
    component_checks,
    component_policy,
    html_report,
    junit_xml,
    validate_attacks,
)
from ansible_collections.kernelfence.isolation.plugins.module_utils.component_model import (
    normalize_components,
)
from ansible_collections.kernelfence.isolation.plugins.module_utils.hardening import (
    service_directives,
    uses_wrapper,
)
from ansible_collections.kernelfence.isolation.plugins.module_utils.proc_isolation import (
    ProcReader,
)

REPO = Path(__file__).resolve().parents[2]
FIX = Path(__file__).parent / "fixtures/proc"
ROLES = json.loads((FIX / "roles.json").read_text())["roles"]
RECORDS = {r["name"]: r for r in normalize_components(yaml.safe_load(
    (REPO / "inventory/example/group_vars/kernelfence/components.yml").read_text()
)["kernelfence_components"])}

POLICIES = [
    ("orchestrator", 252, {"private": ["ipc", "mnt", "net", "user", "uts"], "pid": True}),
    ("orchestrator", 257, {"private": ["ipc", "mnt", "net", "pid", "user", "uts"], "pid": False}),
    ("executor", 257, {"private": ["ipc", "mnt", "pid", "user", "uts"], "pid": False}),
    ("model_backend", 252, {"private": ["ipc", "mnt", "net", "user", "uts"], "pid": True}),
]


@pytest.mark.parametrize(("name", "version", "expected"), POLICIES,
                         ids=[f"{case[0]}-{case[1]}" for case in POLICIES])
def test_policy_follows_the_rendered_directives(name, version, expected):
    record = RECORDS[name]
    promised = component_policy(service_directives(record, version, record.get("client_of")),
                                uses_wrapper(version))
    policy = promised["policy"]
    assert policy["private_namespaces"] == expected["private"]
    assert promised["workload_pid_namespace"] is expected["pid"]
    assert policy["no_new_privs"] is True and policy["seccomp"] is True
    assert policy["forbidden_uids"] == [0]
    assert all(v == [] for v in policy["capabilities"].values())


def test_declared_capability_is_allowed_and_nothing_else():
    promised = component_policy([("User", "kf-x"), ("CapabilityBoundingSet", "CAP_NET_RAW"),
                                 ("AmbientCapabilities", "CAP_NET_RAW")], False)
    assert promised["policy"]["capabilities"]["ambient"] == ["CAP_NET_RAW"]
    assert promised["policy"]["no_new_privs"] is False
    assert promised["policy"]["private_namespaces"] == []


UNIT_OK = {"active": "active", "fragment": "/etc/systemd/system/kf-x.service", "ignored": [],
           "exposure": 0.9, "band": "SAFE", "failing": []}


def checks_for(role: str, unit: dict | None = None, threshold: float = 1.0) -> dict:
    record = RECORDS["orchestrator"]
    promised = component_policy(service_directives(record, 257, None), False)
    scan = ProcReader(str(FIX / "tree")).scan([ROLES[role]])
    checks = component_checks({"name": "orchestrator", "unit": "kf-orchestrator.service",
                               "threshold": threshold}, unit or UNIT_OK, scan, promised)
    return {c["property"]: c for c in checks}


def failed(checks: dict) -> list[str]:
    return sorted(p for p, c in checks.items() if not c["passed"])


def test_recorded_seccomp_process_against_the_orchestrator_policy():
    checks = checks_for("seccomp")
    # Root with every capability, in the recorder's namespaces: only NoNewPrivs, seccomp,
    # the unit checks and the single thread pass.
    assert failed(checks) == sorted([
        "uids", "caps effective", "caps permitted", "caps bounding",
        "ns ipc", "ns mnt", "ns net", "ns pid", "ns user", "ns uts"])
    assert checks["seccomp"]["observed"] == ["filter/2"]
    assert checks["caps ambient"]["passed"] and checks["NoNewPrivs"]["passed"]
    assert checks["ns net"]["command"] == "readlink /proc/PID/ns/net (vs PID 1)"


def test_thread_difference_and_file_caps_are_red():
    assert not checks_for("threads")["threads uniform"]["passed"]
    checks = checks_for("filecaps")
    assert not checks["file caps"]["passed"]
    assert checks["file caps"]["observed"][0]["permitted"] == ["CAP_NET_RAW"]
    assert checks["uids"]["passed"], "uid 65534 is not forbidden"


def test_unit_without_processes_ignored_lines_and_high_exposure_fail():
    unit = dict(UNIT_OK, active="failed", exposure=2.8, ignored=[
        {"file": "/x.service", "line": 5, "kind": "unparsable-value",
         "message": "Failed to parse system call, ignoring: ~@privileged"}])
    record = RECORDS["orchestrator"]
    promised = component_policy(service_directives(record, 257, None), False)
    checks = {c["property"]: c for c in component_checks(
        {"name": "o", "unit": "kf-o.service", "threshold": 1.0}, unit,
        {"processes": [], "vanished": []}, promised)}
    assert not any(c["passed"] for c in checks.values())
    assert checks["unit parsed"]["observed"] == [
        "/x.service:5: Failed to parse system call, ignoring: ~@privileged"]
    assert checks["exposure"]["expected"] == "<= 1.0"


ATTACKS = [{"component": "executor", "attempt": "read /etc/kernelfence/orchestrator/signing.key",
            "expected": "EACCES", "observed": "EACCES", "errno": 13, "passed": True},
           {"component": "executor", "attempt": "connect 127.0.0.2:22", "expected": "EPERM",
            "observed": "connected", "errno": None, "passed": False}]


def evidence(host: str, role: str) -> dict:
    return {"host": host, "versions": {"kernel": "6.1.0", "systemd": "systemd 252 (252.38)",
                                       "libseccomp": "2.5.4-1", "cosign": None},
            "components": [{"name": "orchestrator", "unit": "kf-orchestrator.service",
                            "threshold": 1.0, "exposure": 0.9, "band": "SAFE",
                            "failing": [{"name": "PrivateNetwork=", "exposure": 0.5}]}],
            "checks": list(checks_for(role).values()), "attacks": ATTACKS}


def test_junit_counts_and_names_every_failure():
    root = ElementTree.fromstring(junit_xml(evidence("kf12", "seccomp")))
    cases = root.findall("testsuite/testcase")
    assert int(root.get("tests")) == len(cases) == len(checks_for("seccomp")) + len(ATTACKS)
    failures = {c.get("name"): c.find("failure") for c in cases if c.find("failure") is not None}
    assert int(root.get("failures")) == len(failures) == 10 + 1
    net = (FIX / f"tree/{ROLES['seccomp']}/ns/net").read_text().strip()
    assert failures["ns net"].get("message") == f'expected private, observed ["{net}"]'
    assert "attack: connect 127.0.0.2:22" in failures


def test_html_has_matrix_exposure_and_attacks():
    page = html_report([evidence("kf12", "seccomp"), evidence("kf13", "ambient")])
    assert page.count('<td class="name">kf12</td>') >= 3
    assert "Components &times; properties" in page and "Attack matrix" in page
    assert "NOT blocked" in page and "blocked" in page
    assert "<script" not in page and "http" not in page.split("<body>", 1)[1].split("<h2>Hosts")[0]


@pytest.mark.parametrize(("attacks", "message"), [
    ({"component": "x"}, "must be a JSON list"),
    ([{"component": "x", "attempt": "y"}], r"\[0\] lacks expected, observed, errno, passed"),
    ([dict(ATTACKS[0], passed="yes")], r"\[0\].passed must be true or false"),
])
def test_bad_attack_results_name_the_entry(attacks, message):
    with pytest.raises(ValueError, match=message):
        validate_attacks(attacks)
