# Copyright: (c) 2026, kernelfence contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The host kernel baseline behind the component boundaries: which sysctl settings, read from
and checked against a host in one pass, and what the component profiles need from the kernel.

Everything is read below a root directory (``/`` on a host, a recorded tree in the unit tests),
so the checks run on real recorded /proc and /sys files.
"""

from __future__ import annotations

import ctypes
import errno
import os
from dataclasses import dataclass

from ansible_collections.kernelfence.isolation.plugins.module_utils.hardening import uses_wrapper


@dataclass(frozen=True)
class Setting:
    name: str            # the role variable is host_baseline_<name>
    key: str             # sysctl name
    value: int           # what our drop-in writes
    accept: tuple        # live values that are at least as strict (not rewritten)
    removes: str         # the attack it removes (the role README says the same)


SETTINGS: tuple[Setting, ...] = (
    Setting("ptrace_scope", "kernel.yama.ptrace_scope", 1, (1, 2, 3),
            "a process attaching to (reading the memory of, injecting code into) another process "
            "of the same uid that is not its descendant"),
    Setting("unprivileged_bpf_disabled", "kernel.unprivileged_bpf_disabled", 2, (1, 2),
            "an unprivileged process loading eBPF programs (verifier and JIT bugs are a common "
            "local privilege escalation)"),
    Setting("bpf_jit_harden", "net.core.bpf_jit_harden", 2, (2,),
            "JIT spraying through BPF programs every user can still load (seccomp and socket "
            "filters): constants are blinded for all users"),
    Setting("kptr_restrict", "kernel.kptr_restrict", 1, (1, 2),
            "reading kernel addresses (/proc/kallsyms, /proc/modules) to defeat KASLR, for "
            "every process without CAP_SYSLOG"),
    Setting("dmesg_restrict", "kernel.dmesg_restrict", 1, (1,),
            "reading the kernel log without CAP_SYSLOG: kernel addresses, and the network "
            "policy's log lines of other components' refused packets"),
    Setting("perf_event_paranoid", "kernel.perf_event_paranoid", 3, (3,),
            "unprivileged perf events (side channels on other processes, kernel profiling, "
            "perf subsystem bugs); 3 forbids them on Debian kernels, others treat it as 2"),
    Setting("protected_hardlinks", "fs.protected_hardlinks", 1, (1,),
            "hard links to files the user does not own (pinning or redirecting another "
            "user's file, e.g. a setuid binary or a component's state)"),
    Setting("protected_symlinks", "fs.protected_symlinks", 1, (1,),
            "symlink races in sticky world-writable directories (/tmp): a privileged process "
            "following another user's link"),
    Setting("protected_fifos", "fs.protected_fifos", 1, (1, 2),
            "a privileged process writing into a FIFO planted by another user in a sticky "
            "world-writable directory"),
    Setting("protected_regular", "fs.protected_regular", 1, (1, 2),
            "a privileged process opening (O_CREAT) a regular file planted by another user in a "
            "sticky world-writable directory"),
    Setting("suid_dumpable", "fs.suid_dumpable", 0, (0,),
            "core dumps of processes that changed credentials (setuid programs, daemons that "
            "dropped privileges), which may hold another identity's secrets"),
)
BY_NAME = {s.name: s for s in SETTINGS}

# Debian's kernels have this switch (a Debian patch); user.max_user_namespaces=0 would also stop
# systemd's own PrivateUsers=, which every component unit uses.
USERNS_CLONE = "kernel.unprivileged_userns_clone"
MAX_USERNS = "user.max_user_namespaces"
RESTRICT_USERNS = Setting("restrict_user_namespaces", USERNS_CLONE, 0, (0,),
                          "unprivileged processes outside the units creating user namespaces "
                          "(the entry point of many kernel privilege escalations)")

HEADER = ("# Ansible managed: kernelfence.isolation host_baseline. Local changes are overwritten.\n"
          "# Each setting and the attack it removes: roles/host_baseline/README.md\n")

# Files the reader takes from the root (a recorded tree holds the same relative paths).
EXTRA_KEYS = (USERNS_CLONE, MAX_USERNS, "kernel.seccomp.actions_avail")
FILES = ("proc/self/mountinfo", "sys/fs/cgroup/cgroup.controllers", "sys/kernel/security/lsm",
         "proc/sys/kernel/osrelease")

LANDLOCK_CREATE_RULESET = 444          # same number on every architecture
LANDLOCK_CREATE_RULESET_VERSION = 1


def key_path(key: str) -> str:
    return "proc/sys/" + key.replace(".", "/")


def landlock_abi() -> int | str:
    """The Landlock ABI version of the running kernel, or why there is none (errno name)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    version = libc.syscall(LANDLOCK_CREATE_RULESET, None, ctypes.c_size_t(0),
                           ctypes.c_uint32(LANDLOCK_CREATE_RULESET_VERSION))
    if version >= 0:
        return int(version)
    return errno.errorcode.get(ctypes.get_errno(), str(ctypes.get_errno()))


def _read(root: str, rel: str) -> str | None:
    try:
        with open(os.path.join(root, rel), encoding="utf-8") as handle:
            return handle.read()
    except OSError:
        return None


def read_host(root: str = "/", landlock: int | str | None = None) -> dict:
    """Everything the baseline looks at, as raw text (None when absent): one pass, no writes."""
    keys = [s.key for s in SETTINGS] + list(EXTRA_KEYS)
    return {
        "sysctl": {k: _strip(_read(root, key_path(k))) for k in keys},
        "yama": os.path.isdir(os.path.join(root, "proc/sys/kernel/yama")),
        "files": {rel: _read(root, rel) for rel in FILES},
        "landlock_abi": landlock,
    }


def _strip(text: str | None) -> str | None:
    return None if text is None else text.strip()


def mounts(mountinfo: str | None) -> dict[str, tuple[str, str]]:
    """mount point -> (filesystem type, mount and super options), the last mount wins."""
    found: dict[str, tuple[str, str]] = {}
    for line in (mountinfo or "").splitlines():
        left, sep, right = line.partition(" - ")
        fields, rest = left.split(), right.split()
        if not sep or len(fields) < 6 or len(rest) < 3:
            continue
        found[fields[4]] = (rest[0], fields[5] + "," + rest[2])
    return found


def hidepid(options: str) -> str | None:
    for opt in options.split(","):
        name, _eq, value = opt.partition("=")
        if name == "hidepid" and value not in ("0", "off"):
            return value
    return None


def facts(raw: dict, systemd_version: int | None) -> dict:
    """What the kernel offers the component profiles, and what is missing (problems)."""
    table = mounts(raw["files"]["proc/self/mountinfo"])
    cgroup = table.get("/sys/fs/cgroup", ("", ""))[0]
    proc_opts = table.get("/proc", ("", ""))[1]
    actions = (raw["sysctl"].get("kernel.seccomp.actions_avail") or "").split()
    lsm = raw["files"]["sys/kernel/security/lsm"]
    abi = raw.get("landlock_abi")
    clone = raw["sysctl"].get(USERNS_CLONE)
    max_ns = raw["sysctl"].get(MAX_USERNS)
    wrapper = systemd_version is not None and uses_wrapper(systemd_version)
    return {
        "kernel": _strip(raw["files"]["proc/sys/kernel/osrelease"]),
        "systemd_version": systemd_version,
        "wrapper": wrapper,
        "cgroup_v2": cgroup == "cgroup2",
        "cgroup_fs": cgroup or None,
        "seccomp_filter": "errno" in actions and "kill_process" in actions,
        "seccomp_actions": actions,
        "yama": bool(raw["yama"]),
        "lsm": lsm.strip().split(",") if lsm else None,
        "landlock_abi": abi if isinstance(abi, int) else None,
        "landlock_error": abi if isinstance(abi, str) else None,
        "unprivileged_userns": (clone in (None, "1")) and max_ns not in (None, "0"),
        "unprivileged_userns_clone": None if clone is None else int(clone),
        "max_user_namespaces": None if max_ns is None else int(max_ns),
        "proc_hidepid": hidepid(proc_opts),
    }


def problems(found: dict, wanted: list[Setting], require_landlock: bool) -> list[str]:
    """What the profiles rely on and the kernel lacks, each with what breaks and the fix."""
    out = []
    if not found["cgroup_v2"]:
        out.append(f"cgroup v2: /sys/fs/cgroup is {found['cgroup_fs'] or 'not mounted'}, not "
                   "cgroup2; the units' IPAddressDeny=/IPAddressAllow= and the audit's per-unit "
                   "process lists need the unified hierarchy. Fix: boot with "
                   "systemd.unified_cgroup_hierarchy=1")
    if not found["seccomp_filter"]:
        out.append("seccomp: the kernel offers no seccomp filter mode with the errno and "
                   f"kill_process actions (actions_avail: {found['seccomp_actions'] or 'absent'}); "
                   "SystemCallFilter= and the wrapper's profile need it. Fix: a kernel with "
                   "CONFIG_SECCOMP_FILTER")
    if not found["yama"] and any(s.name == "ptrace_scope" for s in wanted):
        out.append("Yama: kernel.yama.ptrace_scope does not exist (no Yama LSM), so processes "
                   "may attach to any other process of their uid. Fix: a kernel with "
                   "CONFIG_SECURITY_YAMA, or set host_baseline_ptrace_scope: false to accept it")
    if require_landlock and found["landlock_abi"] is None:
        out.append(f"Landlock: not available ({found['landlock_error'] or 'not probed'}). Fix: "
                   "a kernel with CONFIG_SECURITY_LANDLOCK and landlock in its lsm= list, or set "
                   "host_baseline_require_landlock: false")
    if found["wrapper"] and not found["unprivileged_userns"]:
        out.append(f"user namespaces: systemd {found['systemd_version']} runs the components "
                   "under bubblewrap, which needs unprivileged user namespaces, but "
                   f"{USERNS_CLONE}={found['unprivileged_userns_clone']} and {MAX_USERNS}="
                   f"{found['max_user_namespaces']}: the units would fail to start. Fix: set "
                   f"{USERNS_CLONE}=1 and {MAX_USERNS} > 0 in sysctl.d, or use systemd >= 257")
    if found["proc_hidepid"] is not None:
        out.append(f"/proc is mounted with hidepid={found['proc_hidepid']}, which breaks systemd "
                   "and polkit; the units hide other processes with ProtectProc=invisible. Fix: "
                   "remove hidepid from the /proc entry in /etc/fstab")
    return out


def refuse_userns_restriction(found: dict) -> str | None:
    """Why host_baseline_restrict_user_namespaces cannot be honoured here, or None."""
    if found["wrapper"]:
        return (f"host_baseline_restrict_user_namespaces: systemd {found['systemd_version']} on "
                "this host runs every component under bubblewrap (no PrivatePIDs= before 257), "
                f"which needs unprivileged user namespaces; {USERNS_CLONE}=0 would stop every "
                "kf-*.service. Fix: set host_baseline_restrict_user_namespaces: false, or "
                "upgrade the host to systemd >= 257")
    if found["unprivileged_userns_clone"] is None:
        return (f"host_baseline_restrict_user_namespaces: this kernel has no {USERNS_CLONE} "
                f"(a Debian kernel switch), and {MAX_USERNS}=0 would also stop systemd's "
                "PrivateUsers= in every component unit. Fix: set "
                "host_baseline_restrict_user_namespaces: false")
    return None


def wanted_settings(enabled: dict[str, bool], restrict_userns: bool) -> list[Setting]:
    unknown = sorted(set(enabled) - set(BY_NAME))
    if unknown:
        raise ValueError(f"settings: unknown setting(s) {', '.join(unknown)}. Fix: use one of "
                         + ", ".join(BY_NAME))
    chosen = [s for s in SETTINGS if enabled.get(s.name, True)]
    return chosen + ([RESTRICT_USERNS] if restrict_userns else [])


def split_supported(raw: dict, wanted: list[Setting]) -> tuple[list[Setting], list[str]]:
    """(settings this kernel has, sysctl keys it lacks). A missing key is left out of the file:
    systemd-sysctl would log a failure for it at every boot."""
    present = [s for s in wanted if raw["sysctl"].get(s.key) is not None]
    return present, [s.key for s in wanted if raw["sysctl"].get(s.key) is None]


def render(settings: list[Setting]) -> str:
    lines = [HEADER]
    for s in settings:
        lines.append(f"# {s.name}: removes {s.removes}\n{s.key} = {s.value}\n")
    return "\n".join(lines)


def drift(raw: dict, settings: list[Setting]) -> dict[str, dict]:
    """Live values that are not as strict as the baseline: key -> {live, wanted}."""
    out = {}
    for s in settings:
        live = raw["sysctl"].get(s.key)
        try:
            ok = live is not None and int(live) in s.accept
        except ValueError:
            ok = False
        if not ok:
            out[s.key] = {"live": live, "wanted": s.value}
    return out


def systemd_major(version_output: str) -> int | None:
    """'systemd 252 (252.39-1~deb12u1)' -> 252."""
    parts = version_output.split()
    if len(parts) >= 2 and parts[0] == "systemd" and parts[1].isdigit():
        return int(parts[1])
    return None
