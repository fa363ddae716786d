"""isolation_policy.compare on the recorded /proc tree (fixtures/proc/policy_cases.yml)."""

import json
from pathlib import Path

import pytest
import yaml
from ansible_collections.kernelfence.isolation.plugins.module_utils.isolation_policy import (
    PolicyError,
    compare,
    format_diffs,
    normalize_policy,
)
from ansible_collections.kernelfence.isolation.plugins.module_utils.proc_isolation import (
    ProcReader,
)

FIX = Path(__file__).parent / "fixtures/proc"
ROLES = json.loads((FIX / "roles.json").read_text())["roles"]
CASES = yaml.safe_load((FIX / "policy_cases.yml").read_text())
READER = ProcReader(str(FIX / "tree"))


def as_roles(diff: dict) -> list:
    pid_role = next(r for r, p in ROLES.items() if p == diff["pid"])
    if diff["tid"] is None:
        tid = None
    elif diff["tid"] == diff["pid"]:
        tid = pid_role
    else:
        tid = "other"
    return [pid_role, tid, diff["field"]]


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_policy_case(case):
    process = READER.process(ROLES[case["role"]])
    diffs = compare([process], normalize_policy(case["policy"]))
    assert sorted(map(as_roles, diffs), key=str) == sorted(case["violations"], key=str)
    for diff in diffs:
        assert diff["expected"] != diff["observed"]


def test_diff_names_field_expected_and_observed():
    process = READER.process(ROLES["ambient"])
    diffs = compare([process], normalize_policy({"capabilities": {"ambient": []}}))
    text = format_diffs(diffs)
    assert text == (f"pid {ROLES['ambient']} (sleep) capabilities.ambient: expected [], "
                    "observed ['CAP_NET_BIND_SERVICE']")


@pytest.mark.parametrize(("policy", "message"), [
    ({"capabilites": {}}, "unknown field.*capabilites"),
    ({"capabilities": {"effectiv": []}}, "capabilities.effectiv: unknown capability set"),
    ({"capabilities": {"effective": ["NET_RAWW"]}}, "unknown capability 'NET_RAWW'"),
    ({"private_namespaces": ["network"]}, "unknown namespace 'network'"),
])
def test_bad_policy_names_the_field(policy, message):
    with pytest.raises(PolicyError, match=message):
        normalize_policy(policy)
