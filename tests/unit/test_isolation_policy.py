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


COMPACT = ProcReader(str(FIX / "tree"), compact=True)


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_policy_case_same_verdict_on_compact_records(case):
    """A compact scan ("all"/"none" beside the raw masks) is judged exactly as the names one."""
    names = compare([READER.process(ROLES[case["role"]])], normalize_policy(case["policy"]))
    compact = compare([COMPACT.process(ROLES[case["role"]])], normalize_policy(case["policy"]))
    assert compact == names


def test_full_set_said_as_all_is_still_a_violation(tmp_path):
    """A root process with every capability of the kernel: "all" in the record, every name in
    the violation (the word is never compared as a name)."""
    import shutil

    tree = tmp_path / "tree"
    shutil.copytree(FIX / "tree", tree)
    status = tree / str(ROLES["seccomp"]) / "status"
    status.write_text(status.read_text().replace("000001fffeffffff", "000001ffffffffff"))
    process = ProcReader(str(tree), compact=True).process(ROLES["seccomp"])
    assert process["capabilities"]["bounding"] == "all"
    assert process["capabilities"]["ambient"] == "none"
    diffs = compare([process], normalize_policy({"capabilities": {"bounding": ["CAP_NET_RAW"],
                                                                  "ambient": []}}))
    assert [d["field"] for d in diffs] == ["capabilities.bounding"]
    assert len(diffs[0]["observed"]) == 41 and "CAP_SYS_RESOURCE" in diffs[0]["observed"]
