"""The host kernel baseline (role host_baseline): its settings are live, the role restores
drift and is idempotent, its check mode changes nothing, a refused combination changes nothing,
and an attempt the baseline blocks outside the units (where no unit's sandbox applies).

The check after a reboot is in test_network_policy.py, after the suite's one reboot.
"""

import re

from ansible_collections.kernelfence.isolation.plugins.module_utils import host_baseline as hb
from conftest import REPO, as_user, run_playbook, systemd_version

FILE = "/etc/sysctl.d/60-kernelfence-baseline.conf"
PLAYBOOK = REPO / "tests/vm/playbooks/host_baseline.yml"

# As an unprivileged user outside every unit: a tracer attaches to a same-uid sibling (not its
# descendant) and, as the control, to its own child. Prints "<sibling> <own child>".
PTRACE_PROBE = """
import ctypes, errno, os, time
libc = ctypes.CDLL(None, use_errno=True)
libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
def attach(pid):
    if libc.ptrace(16, pid, None, None) == 0:   # PTRACE_ATTACH
        os.waitpid(pid, 0)
        libc.ptrace(17, pid, None, None)        # PTRACE_DETACH
        return "OK"
    return errno.errorcode[ctypes.get_errno()]
def sleeper():
    pid = os.fork()
    if pid == 0:
        time.sleep(120)
        os._exit(0)
    return pid
sibling = sleeper()
r, w = os.pipe()
tracer = os.fork()
if tracer == 0:
    own = sleeper()
    result = attach(sibling) + " " + attach(own)
    os.kill(own, 9)
    os.write(w, result.encode())
    os._exit(0)
os.waitpid(tracer, 0)
print(os.read(r, 64).decode(), os.getuid())
os.kill(sibling, 9)
"""


def sysctl_values(host, keys) -> dict[str, str | None]:
    """Live values in one remote command (each command costs seconds under TCG); None: absent."""
    paths = " ".join("/proc/sys/" + k.replace(".", "/") for k in keys)
    out = host.run(f"for p in {paths}; do printf '%s=' $p; cat $p 2>/dev/null || echo; done").stdout
    values = dict(line.partition("=")[::2] for line in out.splitlines())
    return {k: values.get("/proc/sys/" + k.replace(".", "/"), "").strip() or None for k in keys}


def baseline_file(host) -> dict[str, int]:
    text = host.file(FILE).content_string
    return {k.strip(): int(v) for k, _, v in
            (line.partition("=") for line in text.splitlines()
             if line.strip() and not line.startswith("#"))}


def live(host, key):
    return sysctl_values(host, [key])[key]


def live_mismatches(host) -> tuple[dict[str, int], dict[str, str]]:
    """(the file's settings, those whose live value is not one the baseline accepts)."""
    settings = baseline_file(host)
    accept = {s.key: s.accept for s in (*hb.SETTINGS, hb.RESTRICT_USERNS)}
    values = sysctl_values(host, list(settings))
    bad = {k: v for k, v in values.items() if v is None or int(v) not in accept[k]}
    return settings, bad


def run_role(host, *args):
    proc = run_playbook(host, PLAYBOOK, *args, timeout=600)
    out = proc.stdout + proc.stderr
    recap = re.search(rf"{host.backend.get_hostname()}\s+:\s+ok=\d+\s+changed=(\d+)", out)
    return proc.returncode, int(recap.group(1)) if recap else None, out


def test_every_setting_is_live_after_converge(host):
    settings, bad = live_mismatches(host)
    values = sysctl_values(host, [s.key for s in hb.SETTINGS])
    present = [k for k, v in values.items() if v is not None]
    assert sorted(settings) == sorted(present)  # every setting this kernel has, nothing else
    assert "kernel.yama.ptrace_scope" in settings  # Debian's kernel has Yama
    assert bad == {}
    assert host.run(f"stat -c '%U %a' {FILE}").stdout.split() == ["root", "644"]
    print(f"BASELINE {host.backend.get_hostname()} "
          + ", ".join(f"{k}={v}" for k, v in sorted(values.items())))


def test_ptrace_of_a_same_uid_process_outside_the_units_is_refused(host):
    """nobody, in the SSH session (no unit, no seccomp filter of ours), attaches to a sibling
    of its own uid: EPERM with the baseline's ptrace_scope=1, OK with Debian's default 0. Its
    own child stays attachable (the probe works)."""
    assert live(host, "kernel.yama.ptrace_scope") == "1"
    refused = as_user(host, "nobody", PTRACE_PROBE)
    assert refused == "EPERM OK 65534", refused
    try:
        host.run_expect([0], "echo 0 > /proc/sys/kernel/yama/ptrace_scope")
        allowed = as_user(host, "nobody", PTRACE_PROBE)
    finally:
        host.run_expect([0], "echo 1 > /proc/sys/kernel/yama/ptrace_scope")
    assert allowed == "OK OK 65534", allowed


def test_role_restores_drift_keeps_stricter_values_check_mode_first_idempotent(host):
    """Two values made less strict by hand and one made stricter (fs.protected_regular=2, as
    Debian 12's procps file sets it at boot): check mode reports and changes nothing, the run
    sets back the two and leaves the stricter one, the next run changes nothing."""
    keys = ["kernel.dmesg_restrict", "fs.protected_symlinks", "fs.protected_regular"]
    before = sysctl_values(host, keys)
    text = host.file(FILE).content_string
    host.run_expect([0], "echo 0 > /proc/sys/kernel/dmesg_restrict && "
                    "echo 0 > /proc/sys/fs/protected_symlinks && "
                    "echo 2 > /proc/sys/fs/protected_regular")
    try:
        rc, changed, out = run_role(host, "--check", "--diff")
        assert (rc, changed) == (0, 1), out[-3000:]
        assert "-fs.protected_symlinks = 0" in out and "+kernel.dmesg_restrict = 1" in out, \
            out[-3000:]
        assert "fs.protected_regular" not in out.split("live sysctl", 1)[-1], out[-3000:]
        assert live(host, "kernel.dmesg_restrict") == "0"  # check mode changed nothing
        rc, changed, out = run_role(host, "--diff")
        assert (rc, changed) == (0, 1), out[-3000:]
        assert sysctl_values(host, keys) == {"kernel.dmesg_restrict": "1",
                                             "fs.protected_symlinks": "1",
                                             "fs.protected_regular": "2"}
        assert host.file(FILE).content_string == text  # only live values were set
        rc, changed, out = run_role(host)
        assert (rc, changed) == (0, 0), out[-3000:]
    finally:
        host.run(" && ".join(f"echo {v} > /proc/sys/{k.replace('.', '/')}"
                             for k, v in before.items()))


def test_user_namespace_restriction_is_consistent_with_the_units(host):
    """systemd < 257: the units' bubblewrap needs unprivileged user namespaces, so the switch
    is refused with the variable and the fix, and nothing changes. systemd >= 257: it applies,
    an unprivileged user outside the units gets EPERM from unshare(CLONE_NEWUSER), and the
    units still start (systemd creates their namespaces as root)."""
    # ctypes: os.unshare() is Python >= 3.12, Debian 12 has 3.11. 0x10000000 is CLONE_NEWUSER.
    probe = ("import ctypes, errno\nlibc = ctypes.CDLL(None, use_errno=True)\n"
             "print('OK' if libc.unshare(0x10000000) == 0 "
             "else errno.errorcode[ctypes.get_errno()])")
    sha = host.run(f"sha256sum {FILE}").stdout
    assert as_user(host, "nobody", probe) == "OK"  # control: allowed before
    has_switch = live(host, hb.USERNS_CLONE) is not None
    if systemd_version(host) < 257 or not has_switch:
        rc, _, out = run_role(host, "-e", "host_baseline_restrict_user_namespaces=true")
        assert rc == 2, out[-3000:]
        flat = " ".join(out.split())
        reason = (f"systemd {systemd_version(host)} on this host runs every component under "
                  "bubblewrap") if has_switch and systemd_version(host) < 257 else \
            f"this kernel has no {hb.USERNS_CLONE}"
        assert f"host_baseline_restrict_user_namespaces: {reason}" in flat, flat[-3000:]
        assert "Fix: set host_baseline_restrict_user_namespaces: false" in flat
        assert host.run(f"sha256sum {FILE}").stdout == sha
        assert not has_switch or live(host, hb.USERNS_CLONE) == "1"
        assert as_user(host, "nobody", probe) == "OK"
        return
    try:
        rc, changed, out = run_role(host, "-e", "host_baseline_restrict_user_namespaces=true")
        assert (rc, changed) == (0, 1), out[-3000:]
        assert live(host, hb.USERNS_CLONE) == "0"
        assert as_user(host, "nobody", probe) == "EPERM"
        host.run_expect([0], "systemctl restart kf-executor.service")
        assert host.run("systemctl is-active kf-executor.service").stdout.strip() == "active"
    finally:
        rc, changed, out = run_role(host)  # the switch off again: the line leaves the file
        host.run_expect([0], f"echo 1 > /proc/sys/{hb.USERNS_CLONE.replace('.', '/')}")
    assert (rc, changed) == (0, 1), out[-3000:]
    assert host.run(f"sha256sum {FILE}").stdout == sha
    assert as_user(host, "nobody", probe) == "OK"
