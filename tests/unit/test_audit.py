"""The audit: policy from a unit's directives, checks on the recorded /proc tree, reports."""

import calendar
import html
import json
import re
import time
from pathlib import Path
from xml.etree import ElementTree

import pytest
import yaml
from ansible.template import Templar, trust_as_template
from ansible_collections.kernelfence.isolation.plugins.module_utils.audit import (
    collection_version,
    component_checks,
    component_policy,
    html_report,
    judge_attack,
    junit_xml,
    limit_checks,
    module_result,
    validate_attacks,
)
from ansible_collections.kernelfence.isolation.plugins.module_utils.component_model import (
    normalize_components,
)
from ansible_collections.kernelfence.isolation.plugins.module_utils.hardening import (
    service_directives,
    uses_wrapper,
)
from ansible_collections.kernelfence.isolation.plugins.module_utils.live_limits import (
    LIMIT_NAMES,
    expected_limits,
    host_facts,
    read_live,
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


# -- one verdict for every output (issue 16 item 8) --------------------------------------------
# Evidence built here, one case per class: an attack attempt that got through, a control that
# failed, both, neither; and an entry that says passed while its outcome is not the expected one.
# The rows have the shape isolation_attack returns (control: true for its controls).

PLAYBOOK = yaml.safe_load((REPO / "playbooks/audit.yml").read_text())
ASSERT = next(t["ansible.builtin.assert"] for t in PLAYBOOK[0]["tasks"]
              if "ansible.builtin.assert" in t)

BLOCKED = {"component": "executor", "attempt": "read the orchestrator's signing key",
           "expected": "EACCES", "observed": "EACCES", "errno": "EACCES", "passed": True,
           "control": False}
GOT_THROUGH = {"component": "executor", "attempt": "connect to the model backend's socket",
               "expected": "EACCES", "observed": "OK", "errno": None, "passed": False,
               "control": False}
CONTROL_OK = {"component": "executor", "attempt": "read its own data /var/lib/kf-executor/x",
              "expected": "OK", "observed": "OK", "errno": None, "passed": True, "control": True}
CONTROL_FAILED = {"component": "executor", "attempt": "open a TCP socket", "expected": "OK",
                  "observed": "EPERM", "errno": "EPERM", "passed": False, "control": True}
SAYS_PASSED = dict(GOT_THROUGH, attempt="ptrace the orchestrator", passed=True)

GREEN_CHECKS = [
    {"component": "executor", "unit": "kf-executor.service", "property": "active",
     "command": "systemctl show --property=ActiveState kf-executor.service",
     "expected": "active", "observed": "active", "passed": True},
    {"component": "executor", "unit": "kf-executor.service", "property": "caps effective",
     "command": "/proc/PID/status of every thread of kf-executor.service", "expected": [],
     "observed": [], "passed": True},
]

VERDICT_CASES = {
    "neither": ([BLOCKED, CONTROL_OK], []),
    "attack-got-through": ([BLOCKED, GOT_THROUGH, CONTROL_OK],
                           ["executor: attack: connect to the model backend's socket"]),
    "control-failed": ([BLOCKED, CONTROL_OK, CONTROL_FAILED],
                       ["executor: control: open a TCP socket"]),
    "both": ([GOT_THROUGH, CONTROL_FAILED],
             ["executor: attack: connect to the model backend's socket",
              "executor: control: open a TCP socket"]),
    "says-passed-but-got-through": ([SAYS_PASSED], ["executor: attack: ptrace the orchestrator"]),
}


def built_evidence(attacks: list[dict]) -> dict:
    return {"host": "kf12", "collected_at": "2026-12-08T01:00:00Z",
            "versions": {"kernel": "6.1.0", "systemd": "systemd 252 (252.38)",
                         "libseccomp": "2.5.4-1", "cosign": None},
            "components": [{"name": "executor", "unit": "kf-executor.service", "threshold": 1.0,
                            "exposure": 0.9, "band": "SAFE", "failing": []}],
            "checks": [dict(c) for c in GREEN_CHECKS], "attacks": validate_attacks(attacks)}


def summary(page: str) -> str:
    return re.search(r'<div class="summary">(.*?)</div>', page).group(1)


@pytest.mark.parametrize(("attacks", "failures"), VERDICT_CASES.values(), ids=VERDICT_CASES)
def test_html_junit_and_fail_flag_agree(attacks, failures):
    evidence = built_evidence(attacks)
    page = html_report([evidence])
    junit = ElementTree.fromstring(junit_xml(evidence))
    result = module_result(evidence)
    assert result["failures"] == failures
    assert result["failed_checks"] == len(failures) == int(junit.get("failures"))
    if failures:
        assert f'<span class="bad">{len(failures)} failed</span>' in summary(page)
        assert "all passed" not in page
    else:
        assert '<span class="good">all passed</span>' in summary(page)
    junit_failed = sorted(f"{s.get('name').split('.', 1)[1]}: {c.get('name')}"
                          for s in junit.findall("testsuite") for c in s.findall("testcase")
                          if c.find("failure") is not None)
    assert junit_failed == sorted(failures)
    # The playbook's kernelfence_audit_fail acts on the same count and names the failures.
    templar = Templar(variables={"__kernelfence_audit": result, "kernelfence_audit_fail": True,
                                 "inventory_hostname": "kf12", "__kernelfence_audit_dir": "a"})
    assert templar.evaluate_conditional(trust_as_template(ASSERT["that"])) is (not failures)
    message = templar.template(trust_as_template(ASSERT["fail_msg"]))
    assert all(name in message for name in failures), message


def test_attack_rows_say_what_happened():
    page = html_report([built_evidence([BLOCKED, GOT_THROUGH, CONTROL_OK, CONTROL_FAILED])])
    rows = re.findall(r"<tr>.*?</tr>", page.split("<h2>Attack matrix</h2>", 1)[1])
    results = [re.search(r'<td class="(pass|fail)">([^<]*)', r).groups() for r in rows[1:]]
    assert results == [("pass", "blocked"), ("fail", "NOT blocked"), ("pass", "works"),
                       ("fail", "control FAILED")]


def test_contradicting_entry_is_a_failure_with_its_reason():
    item = judge_attack(SAYS_PASSED)
    assert item["passed"] is False and item["label"] == "NOT blocked"
    assert item["reason"] == "marked passed, but the observed outcome is not the expected one"
    root = ElementTree.fromstring(junit_xml(built_evidence([SAYS_PASSED])))
    assert "not the expected one" in root.find("testsuite/testcase/failure").get("message")


def test_control_must_be_a_bool():
    with pytest.raises(ValueError, match=r"\[0\].control must be true or false"):
        validate_attacks([dict(CONTROL_OK, control="yes")])


# -- when, by what, and the failures in print (issue 16 item 9) --------------------------------

GALAXY_VERSION = yaml.safe_load((REPO / "galaxy.yml").read_text())["version"]


def test_report_says_when_and_which_collection_version_made_it():
    from ansible_collections.kernelfence.isolation.plugins.filter.audit import FilterModule

    filters = FilterModule().filters()
    before = time.time()
    page = filters["audit_html"]([evidence("kf12", "seccomp")])
    stamp = re.search(r'Generated <time datetime="([^"]+)">\1</time> \(UTC\) by '
                      r"kernelfence.isolation ([^;]+);", page)
    assert stamp, summary(page)
    made = calendar.timegm(time.strptime(stamp.group(1), "%Y-%m-%dT%H:%M:%SZ"))
    assert before - 2 <= made <= time.time() + 1
    assert stamp.group(2) == GALAXY_VERSION
    assert "collected 2026-12-08T01:00:00Z" in html_report([built_evidence([])])
    junit = ElementTree.fromstring(filters["audit_junit"](built_evidence([])))
    props = {p.get("name"): p.get("value") for p in junit.iter("property")}
    assert props == {"collected_at": "2026-12-08T01:00:00Z",
                     "collection_version": GALAXY_VERSION}


def test_version_comes_from_the_manifest_then_galaxy_yml(tmp_path):
    (tmp_path / "galaxy.yml").write_text("namespace: kernelfence\nname: isolation\n"
                                         "version: 3.4.5\n")
    assert collection_version(str(tmp_path))["version"] == "3.4.5"
    (tmp_path / "MANIFEST.json").write_text(json.dumps(
        {"collection_info": {"namespace": "kernelfence", "name": "isolation",
                             "version": "3.4.6"}}))
    assert collection_version(str(tmp_path)) == {"version": "3.4.6",
                                                 "source": str(tmp_path / "MANIFEST.json")}
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match=r"neither .*MANIFEST\.json nor .*galaxy\.yml"):
        collection_version(str(empty))


def test_failed_cell_shows_expected_and_observed_without_hover():
    page = html_report([evidence("kf12", "seccomp")])
    printed = re.sub(r'\stitle="[^"]*"', "", page)  # what a printout keeps
    cells = re.findall(r'<td class="fail"><a href="#(failure-\d+)">✘<sup>(\d+)</sup>', printed)
    failing = [c for c in checks_for("seccomp").values() if not c["passed"]]
    assert len(cells) == len(failing) == 10
    for (anchor, number), check in zip(cells, failing, strict=True):
        row = re.search(rf'<tr id="{anchor}"><td>{number}</td>(.*?)</tr>', printed).group(1)
        assert html.escape(check["property"]) in row
        expected = check["expected"] if isinstance(check["expected"], str) \
            else json.dumps(check["expected"])
        assert f'<td class="text expected">{html.escape(expected)}</td>' in row
        assert html.escape(json.dumps(check["observed"])) in row


@pytest.mark.parametrize("role", ["seccomp", "ambient", "threads", "filecaps"])
def test_checks_same_on_compact_capability_records(role):
    """The audit reads a scan in either capability format ("all"/"none" beside the masks, or
    names) and comes to the same checks, observed names included."""
    record = RECORDS["orchestrator"]
    promised = component_policy(service_directives(record, 257, None), False)
    component = {"name": "orchestrator", "unit": "kf-orchestrator.service", "threshold": 1.0}
    names = ProcReader(str(FIX / "tree")).scan([ROLES[role]])
    compact = ProcReader(str(FIX / "tree"), compact=True).scan([ROLES[role]])
    words = {v for p in compact["processes"] for v in p["capabilities"].values()
             if isinstance(v, str)}
    assert words == ({"none"} if role != "ambient" else set())  # ambient holds no empty set
    assert (component_checks(component, UNIT_OK, compact, promised)
            == component_checks(component, UNIT_OK, names, promised))


# Recorded processes with known limits and the cgroup v2 tree they are read against
# (tools/record_limits_fixtures.py).
LIMITS = Path(__file__).parent / "fixtures/limits"
LIMIT_ROLES = json.loads((LIMITS / "roles.json").read_text())["roles"]


def limit_evidence(role: str, name: str = "executor") -> list[dict]:
    """The audit's limit checks of a recorded process against the example executor's unit."""
    proc, cgroup = str(LIMITS / "proc"), str(LIMITS / "cgroup")
    host = host_facts(proc, cgroup, 4096)
    expected = expected_limits(service_directives(RECORDS[name], 252, None), host)
    return limit_checks({"name": "orchestrator", "unit": "kf-orchestrator.service"}, expected,
                        *read_live([LIMIT_ROLES[role]], proc, cgroup), host)


def test_limit_checks_pass_on_matching_limits_and_name_each_loosened_one():
    good = {c["property"]: c for c in limit_evidence("bounded")}
    assert list(good) == list(LIMIT_NAMES) and all(c["passed"] for c in good.values())
    bad = {c["property"]: c for c in limit_evidence("loosened")}
    assert not bad["memory.max"]["passed"]
    assert (bad["memory.max"]["expected"], bad["memory.max"]["observed"]) == ("536870912", ["max"])
    assert bad["memory.max"]["command"] == "cat /sys/fs/cgroup/$(cgroup of PID)/memory.max"
    assert bad["RLIMIT_CORE"]["command"] == "grep 'Max core file size' /proc/PID/limits"
    missing = {c["property"]: c for c in limit_evidence("nocontrollers")}
    assert missing["io.weight"]["observed"] == ["absent: io controller not enabled"]
    assert not missing["io.weight"]["passed"]


def test_report_has_a_column_per_limit_and_prints_each_failed_one():
    evidence = {"host": "kf12", "versions": {"kernel": "6.1.0", "systemd": "systemd 252",
                                             "libseccomp": "2.5.4-1", "cosign": None},
                "components": [], "attacks": [],
                "checks": [*checks_for("seccomp").values(), *limit_evidence("loosened")]}
    page = html_report([evidence])
    grid = page.split("Components &times; resource limits", 1)[1].split("</table>", 1)[0]
    headers = re.findall(r'<th class="prop"><span>([^<]*)</span></th>', grid)
    assert headers == [html.escape(n) for n in LIMIT_NAMES]
    # The isolation grid keeps its own columns only.
    first = page.split("Components &times; properties", 1)[1].split("</table>", 1)[0]
    assert "memory.max" not in first and "NoNewPrivs" in first
    failures = page.split("<h2>Failures</h2>", 1)[1].split("</table>", 1)[0]
    row = next(r for r in failures.split("<tr") if ">memory.max<" in r)
    assert '<td class="text expected">536870912</td>' in row
    assert '<td class="text observed">[&quot;max&quot;]</td>' in row
    root = ElementTree.fromstring(junit_xml(evidence))
    cases = {c.get("name"): c for c in root.findall("testsuite/testcase")}
    assert cases["pids.max"].find("failure").get("message") == \
        'expected 128, observed ["max"]'
    assert cases["memory.low"].find("failure") is None
