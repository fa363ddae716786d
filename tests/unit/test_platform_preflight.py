"""The platform preflight on facts its module recorded in a Debian 13 guest (systemd 257); the
other cases change one recorded fact at a time to the value a host without the feature shows."""

import json
from pathlib import Path

import pytest
from ansible_collections.kernelfence.isolation.plugins.module_utils.platform_preflight import (
    cgroup_controller_problems,
    problems,
    read_facts,
    systemd_version,
)

REC = json.loads((Path(__file__).parent / "fixtures/platform_preflight/debian13.json").read_text())
SYSTEMD_252 = "systemd 252 (252.39-1~deb12u1)\n+PAM +AUDIT +SELINUX\n"
CGROUP_V1 = ("tmpfs /sys/fs/cgroup tmpfs ro,nosuid,nodev,noexec,mode=755 0 0\n"
             "cgroup2 /sys/fs/cgroup/unified cgroup2 rw,nosuid,nodev,noexec,relatime 0 0\n")


def facts(**change):
    return {**REC["facts"], **change}


def test_recorded_debian13_host_is_ready():
    assert systemd_version(REC["version_output"]) == 257
    assert problems(REC["facts"], REC["version_output"], 0) == []


def test_user_namespaces_only_matter_below_257():
    no_userns = facts(max_user_namespaces="0\n", unprivileged_userns_clone="0\n",
                      apparmor_restrict_userns="1\n")
    assert problems(no_userns, REC["version_output"], 0) == []
    found = problems(no_userns, SYSTEMD_252, 0)
    assert len(found) == 3 and all(p.startswith("user namespaces: systemd 252 has no "
                                                "PrivatePIDs=") for p in found)
    assert "Fix: sysctl -w user.max_user_namespaces=15000" in found[0]
    assert "Fix: sysctl -w kernel.unprivileged_userns_clone=1" in found[1]
    assert "AppArmor" in found[2]


@pytest.mark.parametrize("change, version, nft_rc, start", [
    ({"mounts": CGROUP_V1}, None, 0, "cgroup v2: /sys/fs/cgroup is not a cgroup2"),
    ({"status": "Name:\tpython3\nNoNewPrivs:\t0\n"}, None, 0, "seccomp: the kernel has no"),
    ({"seccomp_actions": "kill_process kill_thread\n"}, None, 0, "seccomp: the kernel's filter"),
    ({}, "systemd 249 (249.11)\n", 0, "systemd 249 is older than 250"),
    ({}, "bash: systemctl: command not found\n", 0, "systemd: cannot read the version"),
    ({"nf_tables": None}, None, None, "nftables: the running kernel has no nf_tables"),
    ({}, None, 1, "nftables: `nft list tables` failed"),
])
def test_each_missing_requirement_is_one_sentence_with_a_fix(change, version, nft_rc, start):
    found = problems(facts(**change), version or REC["version_output"], nft_rc, "nf_tables: x")
    assert len(found) == 1 and found[0].startswith(start), found
    assert "Fix: " in found[0]


def test_nft_not_installed_yet_is_fine_when_the_kernel_has_nf_tables():
    """A fresh host: the network_policy role installs nft later in the same play."""
    for kind in ("loaded", "builtin", "module"):
        assert problems(facts(nf_tables=kind), REC["version_output"], None) == []


def test_read_facts_reads_the_files_under_a_root(tmp_path):
    (tmp_path / "proc/sys/user").mkdir(parents=True)
    (tmp_path / "proc/sys/user/max_user_namespaces").write_text("7826\n")
    got = read_facts(str(tmp_path))
    assert got["max_user_namespaces"] == "7826\n" and got["mounts"] is None
    assert got["nf_tables"] is None
    (tmp_path / "sys/module/nf_tables").mkdir(parents=True)
    assert read_facts(str(tmp_path))["nf_tables"] == "loaded"


def test_recorded_hybrid_cgroup_host_is_refused_for_cgroup_v2_only():
    """Recorded on the project's build machine (systemd 252 tools, not PID 1; cgroup v1
    controllers with cgroup2 only at /sys/fs/cgroup/unified); mounts and status trimmed to
    the /proc, /sys and seccomp lines."""
    rec = json.loads((Path(__file__).parent /
                      "fixtures/platform_preflight/hybrid-cgroup-build-machine.json").read_text())
    found = problems(rec["facts"], rec["version_output"], rec["nft_rc"], rec["nft_err"])
    assert len(found) == 1 and found[0].startswith(
        "cgroup v2: /sys/fs/cgroup is not a cgroup2 (unified) mount"), found


NOT_BOOTED = json.loads((Path(__file__).parent /
                         "fixtures/platform_preflight/not-booted-build-machine.json").read_text())
NOT_BOOTED_START = "systemd: this host was not booted with systemd as its init (PID 1): " \
                   "/run/systemd/system does not exist"


def test_recorded_build_machine_not_booted_with_systemd_is_told_so_first():
    """Recorded by the module on the project's build machine (PID 1 is not systemd, no
    /run/systemd/system; systemctl 252 installed; cgroup v1 controllers with cgroup2 only at
    /sys/fs/cgroup/unified). The fix is a host booted with systemd, not a cgroup boot option."""
    assert NOT_BOOTED["facts"]["systemd_booted"] is False
    found = problems(NOT_BOOTED["facts"], NOT_BOOTED["version_output"], NOT_BOOTED["nft_rc"],
                     NOT_BOOTED["nft_err"])
    assert found == [found[0]] and found[0].startswith(NOT_BOOTED_START), found
    assert "Fix: run the components on a host or VM booted with systemd" in found[0]
    assert not any("unified_cgroup_hierarchy" in p for p in found)


@pytest.mark.parametrize("change, version, nft_rc", [
    ({"mounts": CGROUP_V1}, None, 0),
    ({"status": "Name:\tpython3\nNoNewPrivs:\t0\n"}, None, 0),
    ({"nf_tables": None}, None, None),
    ({}, "bash: systemctl: command not found\n", 0),
    ({}, "systemd 249 (249.11)\n", 0),
])
def test_not_booted_comes_first_whatever_else_is_missing(change, version, nft_rc):
    found = problems(facts(systemd_booted=False, **change), version or REC["version_output"],
                     nft_rc)
    assert found[0].startswith(NOT_BOOTED_START), found
    assert not any(p.startswith("cgroup v2:") for p in found), found
    # Control: the same facts on a booted host do not mention booting.
    booted = problems(facts(systemd_booted=True, **change), version or REC["version_output"],
                      nft_rc)
    assert booted and not any(p.startswith(NOT_BOOTED_START) for p in booted), booted


def test_read_facts_applies_the_sd_booted_rule(tmp_path):
    assert read_facts(str(tmp_path))["systemd_booted"] is False
    (tmp_path / "run/systemd").mkdir(parents=True)
    (tmp_path / "run/systemd/system").write_text("")  # a file is not the directory
    assert read_facts(str(tmp_path))["systemd_booted"] is False
    (tmp_path / "run/systemd/system").unlink()
    (tmp_path / "run/systemd/system").mkdir()
    assert read_facts(str(tmp_path))["systemd_booted"] is True


def test_the_module_on_this_machine_says_first_whether_it_was_booted_with_systemd(tmp_path):
    """The real module, through ansible, on the machine running the tests (the build machine's
    PID 1 is not systemd). The expectation follows the machine's own /run/systemd/system."""
    import os
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[2]
    env = dict(os.environ, ANSIBLE_CONFIG=str(repo / "ansible.cfg"), ANSIBLE_NOCOLOR="1")
    ansible = Path(sys.executable).with_name("ansible")
    proc = subprocess.run([str(ansible), "localhost", "-c", "local", "-m",
                           "kernelfence.isolation.platform_preflight", "--tree", str(tmp_path)],
                          capture_output=True, text=True, env=env, cwd=repo, timeout=120,
                          check=False)
    result = json.loads((tmp_path / "localhost").read_text())
    booted = Path("/run/systemd/system").is_dir()
    assert result["facts"]["systemd_booted"] is booted
    if booted:
        assert not any(p.startswith(NOT_BOOTED_START) for p in result["problems"]), result
    else:
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert result["problems"][0].startswith(NOT_BOOTED_START), result["problems"]
        assert result["msg"].startswith("this host cannot run the hardened components: "
                                        + NOT_BOOTED_START), result["msg"]
        assert "unified_cgroup_hierarchy" not in result["msg"]


CGROUP = Path(__file__).parent / "fixtures/platform_preflight/cgroup"


def test_resource_controllers_offered_by_the_recorded_debian12_guest_pass():
    """cgroup.controllers recorded in the Debian 12 lab guest (host_baseline fixture kf12-fresh).
    Not yet in subtree_control is fine: systemd enables a controller when a unit's limit needs
    it (the VM suite checks the live cgroup files after the deploy)."""
    offered = (CGROUP / "kf12-fresh/cgroup.controllers").read_text()
    assert cgroup_controller_problems(offered, "") == []
    assert cgroup_controller_problems(offered, "memory pids\n") == []
    ready = facts(cgroup_controllers=offered, cgroup_subtree_control="memory pids\n")
    assert problems(ready, REC["version_output"], 0) == []


def test_controllers_bound_to_cgroup_v1_are_refused_with_a_fix():
    """The unified hierarchy of this build machine (recorded verbatim): cgroup v1 holds memory,
    pids, cpu and io, so the cgroup2 tree offers only hugetlb."""
    offered = (CGROUP / "build-machine-unified/cgroup.controllers").read_text()
    enabled = (CGROUP / "build-machine-unified/cgroup.subtree_control").read_text()
    found = cgroup_controller_problems(offered, enabled)
    assert found == [
        "cgroup controllers: memory, pids, cpu, io not available at /sys/fs/cgroup "
        "(cgroup.controllers: hugetlb; cgroup.subtree_control: empty), so MemoryMax=, "
        "TasksMax=, CPUWeight=, IOWeight= would not be enforced. Fix: boot without "
        "cgroup_disable= for them (some kernels need cgroup_enable=memory on the command line) "
        "and without cgroup v1 mounts that bind them (systemd.unified_cgroup_hierarchy=1); in "
        "a container, delegate them to it"]


@pytest.mark.parametrize("drop", ["memory", "pids", "cpu", "io"])
def test_each_missing_resource_controller_fails_the_preflight(drop):
    offered = (CGROUP / "kf12-fresh/cgroup.controllers").read_text()
    without = " ".join(c for c in offered.split() if c != drop) + "\n"
    found = problems(facts(cgroup_controllers=without, cgroup_subtree_control=""),
                     REC["version_output"], 0)
    assert len(found) == 1 and found[0].startswith(f"cgroup controllers: {drop} not available")
    assert "Fix: " in found[0]


def test_read_facts_reads_the_cgroup_files(tmp_path):
    (tmp_path / "sys/fs/cgroup").mkdir(parents=True)
    (tmp_path / "sys/fs/cgroup/cgroup.controllers").write_text("cpu io memory pids\n")
    (tmp_path / "sys/fs/cgroup/cgroup.subtree_control").write_text("memory pids\n")
    got = read_facts(str(tmp_path))
    assert got["cgroup_controllers"] == "cpu io memory pids\n"
    assert got["cgroup_subtree_control"] == "memory pids\n"
