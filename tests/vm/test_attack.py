"""A compromised executor attacks the other components and the host from inside its confinement.

The probe runs in a sibling of kf-executor.service (its own text, only the command replaced) and,
as the baseline, as kf-executor in a plain unit. Every attempt must end with its exact errno in
the confinement; the controls must pass in both runs; the baseline must let a substantial part
of the attempts through (proof that the attempts can succeed, so that the suite can fail).
"""

import json
from pathlib import Path

import pytest
from conftest import run_playbook

REPO = Path(__file__).resolve().parents[2]
# Attempts that file permissions or the host's own defaults already stop for an unprivileged
# user: the baseline must let through at least this many of the rest.
MIN_LET_THROUGH = 18


@pytest.fixture(scope="module")
def attack(host, tmp_path_factory):
    out = tmp_path_factory.mktemp("attack") / "attack.json"
    proc = run_playbook(host, REPO / "tests/vm/playbooks/attack.yml", "-e", f"kf_results={out}")
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    result = json.loads(out.read_text())
    name = host.backend.get_hostname()
    for row in result["rows"]:
        print(f"ATTACK {name} {row['id']}: expected {row['expected']} observed "
              f"{row['observed']} baseline {row.get('baseline')}")
    summary = result["summary"]
    print(f"ATTACK-SUMMARY {name} systemd {result['systemd']}: attempted {summary['attempted']}, "
          f"blocked {summary['blocked']}, baseline let through "
          f"{len(summary['baseline_let_through'])}, controls {summary['controls']}")
    return result


def test_every_attempt_is_blocked_with_its_exact_errno(attack):
    wrong = [f"{r['id']}: expected {r['expected']}, observed {r['observed']}"
             for r in attack["rows"] if not r["control"] and not r["passed"]]
    assert wrong == []
    assert attack["summary"]["escaped"] == []
    assert attack["summary"]["attempted"] == attack["summary"]["blocked"] >= 80


def test_the_controls_succeed_in_the_confinement_and_the_baseline(attack):
    """A probe that cannot read its own state, reach its allowed endpoint or see an EFAULT
    would 'block' everything: the controls prove each kind of attempt works."""
    assert attack["summary"]["controls"] >= 8
    assert attack["summary"]["controls_failed"] == []
    assert attack["summary"]["baseline_controls_failed"] == []


def test_the_probe_ran_with_the_executors_identity_and_unit(attack, host):
    uid = host.user("kf-executor").uid
    assert attack["identity"]["uid"] == uid and attack["identity"]["euid"] == uid
    assert attack["baseline_identity"]["uid"] == uid
    sibling = attack["units"]["kf-attack-executor.service"]
    installed = host.run("systemctl cat --no-pager kf-executor.service").stdout
    kept = {"User", "Group", "SystemCallFilter", "ProtectSystem", "PrivateUsers",
            "NoNewPrivileges", "CapabilityBoundingSet", "IPAddressDeny", "IPAddressAllow",
            "RestrictAddressFamilies", "RestrictNamespaces", "MemoryDenyWriteExecute",
            "ProtectProc", "PrivateDevices", "ReadWritePaths"}
    lines = [ln for ln in installed.splitlines() if ln.split("=", 1)[0] in kept]
    assert len(lines) >= len(kept)
    for line in lines:
        assert line in sibling.splitlines(), f"the probe's unit lost {line!r}"
    assert "JoinsNamespaceOf=kf-executor.service" in sibling


def test_the_baseline_lets_a_substantial_part_through(attack):
    through = attack["summary"]["baseline_let_through"]
    assert len(through) >= MIN_LET_THROUGH, through
    # Each of these is the confinement's work, not the file system's or the kernel's default.
    for expected in ("unshare-user", "mmap-wx", "mprotect-wx", "ptrace-own-child",
                     "setuid-su", "setuid-passwd", "setuid-plant", "see-host-pid", "keyctl",
                     "io-uring-setup", "inet6-socket", "netlink-socket", "personality",
                     "shared-tmp", "shared-dev-shm", "cmdline-orchestrator"):
        assert expected in through


def test_the_probe_leaves_nothing_behind(attack, host):
    assert not host.file("/run/kf-attack").exists
    assert host.run("ls /run/systemd/system/ | grep -c kf-attack").stdout.strip() == "0"
    listed = host.run("systemctl list-units --all --no-legend 'kf-attack*'").stdout.strip()
    assert listed == ""
