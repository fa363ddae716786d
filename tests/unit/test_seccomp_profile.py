"""OCI seccomp profiles from the target's own syscall groups (recorded from systemd 252)."""

from pathlib import Path

import pytest
from ansible_collections.kernelfence.isolation.plugins.module_utils.hardening import (
    workload_syscalls,
)
from ansible_collections.kernelfence.isolation.plugins.module_utils.seccomp_profile import (
    expand,
    oci_profile,
    parse_syscall_groups,
)

GROUPS = parse_syscall_groups(
    (Path(__file__).parent / "fixtures/systemd_analyze/syscall-filter-252.txt").read_text())


def test_groups_parsed_with_nesting():
    assert "@system-service" in GROUPS and "@privileged" in GROUPS
    assert "@chown" in GROUPS["@privileged"]
    assert {"chown", "fchownat", "capset", "setuid"} <= expand(["@privileged"], GROUPS)


def test_profile_is_allow_list_minus_deny_list():
    allow, deny, readd = workload_syscalls({"syscalls": {}})
    assert readd == []
    profile = oci_profile(allow, deny, GROUPS, readd)
    names = set(profile["syscalls"][0]["names"])
    assert profile["defaultAction"] == "SCMP_ACT_ERRNO" and profile["defaultErrnoRet"] == 1
    assert {"read", "write", "openat", "execve", "socket", "connect"} <= names
    for forbidden in ("mount", "setuid", "capset", "chown", "ptrace", "bpf", "keyctl",
                      "kexec_load", "init_module", "reboot", "setrlimit", "swapon"):
        assert forbidden not in names, forbidden


def test_component_allowance_extends_the_profile():
    allow, deny, readd = workload_syscalls(
        {"syscalls": {"allow": ["@chown"], "deny": ["@network-io"]}})
    names = set(oci_profile(allow, deny, GROUPS, readd)["syscalls"][0]["names"])
    assert "chown" in names and "connect" not in names


def test_workload_cannot_create_namespaces():
    allow, deny, readd = workload_syscalls({"syscalls": {"allow": ["unshare", "setns"]}})
    profile = oci_profile(allow, deny, GROUPS, readd)
    plain = set(profile["syscalls"][0]["names"])
    assert not plain & {"clone", "clone3", "unshare", "setns"}
    clone = next(r for r in profile["syscalls"][1:] if r["names"] == ["clone"])
    assert clone["args"][0]["op"] == "SCMP_CMP_MASKED_EQ" and clone["args"][0]["valueTwo"] == 0
    assert clone["args"][0]["value"] & 0x10000000, "CLONE_NEWUSER is in the mask"
    clone3 = next(r for r in profile["syscalls"][1:] if r["names"] == ["clone3"])
    assert clone3 == {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38}


def test_unknown_group_is_an_error():
    with pytest.raises(ValueError, match="unknown syscall group @nonsense"):
        oci_profile(["@system-service", "@nonsense"], [], GROUPS)
