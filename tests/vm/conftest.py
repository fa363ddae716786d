"""Shared fixtures of the VM scenarios: the component records the play deployed."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / ".collections"))

from ansible_collections.kernelfence.isolation.plugins.module_utils.component_model import (
    normalize_components,
)

# Expected systemd major version per scenario instance (see molecule/*/molecule.yml).
SYSTEMD_BY_INSTANCE = {"kf12": 252, "kf13": 257}

# Two tiers of VM checks (docs/development.md). `core` is what CI runs on Debian 12 in
# its time budget: every live isolation check, the whole attack suite, the isolation modules,
# every bad component model and network policy, one bad artifact per verification path and the
# copy corrupted on the host, the sysctl drift run. `full` (`./kf test --full`, and a bare
# `molecule verify`) adds the rest of the bad-artifact matrix and the runs that take minutes
# under TCG: upgrade, keyless install, reboot, the role twice in one play, rollout/rollback.
# Left-out checks are reported as deselected, never skipped.
SUITE = os.environ.get("KF_VM_SUITE", "full")
if SUITE not in ("core", "full"):
    raise pytest.UsageError(f"KF_VM_SUITE={SUITE!r}: use 'core' or 'full'")
full = pytest.mark.full


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "full: a check that runs only in the full VM suite (KF_VM_SUITE=full)")


def pytest_collection_modifyitems(config, items):
    if SUITE == "full":
        return
    kept, deselected = [], []
    for item in items:
        (deselected if item.get_closest_marker("full") else kept).append(item)
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = kept


@pytest.fixture(scope="session")
def components():
    data = yaml.safe_load(
        (REPO / "inventory/example/group_vars/kernelfence/components.yml").read_text())
    return normalize_components(data["kernelfence_components"])


def run_playbook(host, playbook, *args, timeout=900, env_extra=None):
    """ansible-playbook PLAYBOOK against this scenario's instance only (molecule's inventory,
    the repository's ansible.cfg, plain output); never raises on the play's exit code."""
    env = dict(os.environ, ANSIBLE_CONFIG=str(REPO / "ansible.cfg"), ANSIBLE_NOCOLOR="1",
               ANSIBLE_STDOUT_CALLBACK="default", **(env_extra or {}))
    return subprocess.run(
        ["ansible-playbook", "-i", os.environ["MOLECULE_INVENTORY_FILE"],
         "--limit", host.backend.get_hostname(), *args, str(playbook)],
        capture_output=True, text=True, env=env, timeout=timeout, check=False)


def as_user(host, user, code):
    """Run Python as a component user (runuser: their shell is nologin) and return its stdout."""
    cmd = host.run("runuser -u %s -- python3 -c %s", user, code)
    assert cmd.rc == 0, cmd.stderr
    return cmd.stdout.strip()


def listdir_errno(host, user, path):
    """'OK' when the user can list path, else the errno name the kernel returned."""
    code = ("import errno, os\n"
            f"try:\n    os.listdir({path!r})\n    print('OK')\n"
            "except OSError as e:\n    print(errno.errorcode[e.errno])")
    return as_user(host, user, code)


def systemd_version(host):
    return int(host.run("systemctl --version").stdout.split()[1])


def unit_pids(host, unit):
    """Every process of the unit, read from its cgroup (host PIDs, whatever namespace they use)."""
    cmd = host.run("cat /sys/fs/cgroup/system.slice/%s/cgroup.procs", unit)
    assert cmd.rc == 0, f"{unit} has no cgroup: {cmd.stderr}"
    return [int(p) for p in cmd.stdout.split()]


def proc_status(host, pid):
    """/proc/PID/status of the process and of each of its threads, as dicts."""
    out = host.run(
        "for t in /proc/%s/task/*; do echo \"== $t\"; cat $t/status; done", str(pid)).stdout
    threads, current = [], None
    for line in out.splitlines():
        if line.startswith("== "):
            current = {"task": line[3:]}
            threads.append(current)
        elif ":" in line and current is not None:
            key, _, value = line.partition(":")
            current[key] = value.strip()
    return threads


def ns_ids(host, pid):
    names = ["pid", "ipc", "mnt", "net", "uts", "user", "cgroup"]
    loop = f"for n in {' '.join(names)}; do readlink /proc/{int(pid)}/ns/$n; done"
    out = host.run(loop).stdout.split()
    return dict(zip(names, out, strict=True))


def exe(host, pid):
    return host.run("readlink /proc/%s/exe", str(pid)).stdout.strip()
