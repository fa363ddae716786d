# Copyright: (c) 2026, kernelfence contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Hardening profiles as data, and the one pipeline that renders a component's systemd unit.

A profile is a small set of relaxations of one strict base. Every relaxation is named here with
its reason, so the rendered unit documents which default a profile gave up and why. The same
record renders differently per systemd version only where the version lacks a directive:
`PrivatePIDs=` exists from systemd 257; on older systemd a bubblewrap wrapper gives the same
PID and IPC namespaces, and the unit admits exactly the namespaces the wrapper creates.
"""

from __future__ import annotations

from ansible_collections.kernelfence.isolation.plugins.module_utils.resource_limits import (
    resource_directives,
    scratch_mounts,
)

# Directives every component gets unless its profile relaxes one (in rendering order).
BASE: list[tuple[str, str]] = [
    ("NoNewPrivileges", "yes"),
    ("CapabilityBoundingSet", ""),
    ("AmbientCapabilities", ""),
    ("ProtectSystem", "strict"),
    ("ProtectHome", "yes"),
    ("PrivateTmp", "yes"),
    ("PrivateDevices", "yes"),
    ("DevicePolicy", "closed"),
    # PrivateDevices= keeps the host's /dev/shm (POSIX shared memory) in the private /dev: a
    # file another service leaves there would be readable (the attack suite found it).
    ("TemporaryFileSystem", "/dev/shm:rw,nosuid,nodev,noexec,mode=1777"),
    ("PrivateIPC", "yes"),
    ("PrivateMounts", "yes"),
    ("PrivateUsers", "yes"),
    ("ProtectProc", "invisible"),
    ("ProcSubset", "pid"),
    ("ProtectKernelTunables", "yes"),
    ("ProtectKernelModules", "yes"),
    ("ProtectKernelLogs", "yes"),
    ("ProtectClock", "yes"),
    ("ProtectControlGroups", "yes"),
    ("ProtectHostname", "yes"),
    ("RestrictNamespaces", "yes"),
    ("RestrictSUIDSGID", "yes"),
    ("RestrictRealtime", "yes"),
    ("LockPersonality", "yes"),
    ("MemoryDenyWriteExecute", "yes"),
    ("SystemCallArchitectures", "native"),
    ("KeyringMode", "private"),
    ("RemoveIPC", "yes"),
    ("UMask", "0077"),
]

# The deny list applied after the @system-service allow list. It must stay a separate
# SystemCallFilter= line: a leading '~' applies to a whole line only.
SYSCALL_ALLOW = ["@system-service"]
# io_uring is in @system-service, but no component needs it and it has been the door of many
# kernel privilege escalations (the attack suite found it open: tests/vm/test_attack.py).
SYSCALL_DENY = ["@privileged", "@resources", "@mount", "@debug", "@module", "@reboot", "@swap",
                "@clock", "@cpu-emulation", "@obsolete", "@raw-io", "@keyring",
                "io_uring_setup", "io_uring_enter", "io_uring_register"]

# What the bubblewrap wrapper itself needs before it execs the workload (systemd < 257): it
# creates user, mount and PID namespaces, pivots into its new root and drops the capabilities
# it holds inside its user namespace. The IPC namespace comes from systemd's PrivateIPC=yes on
# every supported version, so the wrapper does not unshare IPC and the unit does not admit it.
# The allowance costs exposure (user 0.3, pid 0.1, mnt 0.1, @mount 0.2, @privileged 0.2 on
# systemd 252's scale): WRAPPER_EXPOSURE is added to the profile threshold where it applies.
WRAPPER_NAMESPACES = "user mnt pid"
WRAPPER_EXPOSURE = 0.9
WRAPPER_SYSCALLS = ["@mount", "capset", "setresuid", "setresgid", "setgroups", "pivot_root",
                    "unshare", "clone", "clone3"]

PROFILES: dict[str, dict] = {
    "orchestrator": {
        "threshold": 1.0,
        "reason": "holds keys; reaches peers over unix sockets only unless egress is listed",
    },
    "executor": {
        "threshold": 1.0,
        "reason": "runs untrusted-input tools; reaches only its egress allow list",
    },
    "model_backend": {
        "threshold": 0.5,
        "reason": "serves local weights over a unix socket; no network at all",
        "force_private_network": True,
    },
    "custom": {
        "threshold": 1.0,
        "reason": "strict base; relaxes only what the entry asks for",
    },
}

NATIVE_PID_NAMESPACE = 257
BWRAP = "/usr/bin/bwrap"


# The scratch space is a size-bounded private tmpfs (TemporaryFileSystem=) instead of
# PrivateTmp=yes, which has no size (resource_limits.scratch_mounts). The exposure scorer
# reads only PrivateTmp= and counts "access to other software's temporary files" (0.2 on
# systemd 252's scale, measured offline) although the unit sees no other unit's files.
SCRATCH_EXPOSURE = 0.2


def threshold(profile: str, systemd_version: int = NATIVE_PID_NAMESPACE,
              bounded_scratch: bool = True) -> float:
    """Highest exposure the profile accepts; the documented allowances for the bounded scratch
    space and, on old systemd, for the wrapper."""
    base = PROFILES[profile]["threshold"] + (SCRATCH_EXPOSURE if bounded_scratch else 0.0)
    return round(base + (WRAPPER_EXPOSURE if uses_wrapper(systemd_version) else 0.0), 1)


def uses_wrapper(systemd_version: int) -> bool:
    return systemd_version < NATIVE_PID_NAMESPACE


SHELL = "/bin/sh"
SHA256SUM = "/usr/bin/sha256sum"
# The descriptor bubblewrap reads the compiled program from. bubblewrap 0.8 closes the
# --seccomp descriptor after reading it and never reopens it: handed over as standard input
# (StandardInput=file:), the workload would start with descriptor 0 closed, and its first
# open() would become its standard input. Descriptors 3 and up carry the listening sockets of a
# socket-activated service (LISTEN_FDS, from 3): the program takes descriptor 9, the highest a
# POSIX sh redirects, above the sockets (the model allows a component at most MAX_SOCKETS).
SECCOMP_FD = 9
MAX_SOCKETS = SECCOMP_FD - 3
# A fixed POSIX sh line that only opens the program and execs: the program's path is $0 and
# bubblewrap's argv is "$@", passed as arguments, so nothing is re-quoted and no component
# field reaches the script. A missing program stops here, the shell naming the file.
SECCOMP_HANDOFF = f'exec "$@" {SECCOMP_FD}<"$0"'


def seccomp_files(config_dir: str) -> dict[str, str]:
    """Where a component's seccomp profile, its compiled program (systemd < 257) and the
    checksum file of both live."""
    return {"profile": f"{config_dir}/seccomp.json", "bpf": f"{config_dir}/seccomp.bpf",
            "checksums": f"{config_dir}/seccomp.bpf.sha256"}


def wrapper_argv(seccomp_bpf: str | None = None) -> list[str]:
    """The bubblewrap argv giving the workload its own PID namespace, with the hand-off of
    the compiled seccomp program in front when one is given.

    The host root stays as systemd's sandbox made it (read-only where it is read-only); bwrap
    adds the namespaces, dies with its parent and forbids the workload further user namespaces.
    The program (compiled at deploy time, unit_install's bpf_dest) is opened as descriptor 3 and
    bwrap loads it (--seccomp 9) just before it execs the workload.
    """
    # --proc /proc: a procfs of the new PID namespace. Without it the workload kept the host's
    # /proc, where ProtectProc=invisible hides other users' processes but not its own user's
    # host PIDs (the attack suite's procfs-of-host attempt found them). bwrap mounts /proc/sys
    # and the other kernel knobs of the new /proc read-only.
    # No --disable-userns: it writes /proc/sys/user/max_user_namespaces, which
    # ProtectKernelTunables=yes keeps read-only. The seccomp profile bwrap loads denies the
    # workload every namespace-creating call instead (see seccomp_profile.NAMESPACE_SYSCALLS).
    argv = [BWRAP, "--bind", "/", "/", "--dev-bind", "/dev", "/dev",
            "--unshare-user", "--unshare-pid", "--proc", "/proc",
            "--die-with-parent", "--new-session", "--cap-drop", "ALL"]
    if seccomp_bpf:
        return [SHELL, "-c", SECCOMP_HANDOFF, seccomp_bpf, *argv,
                "--seccomp", str(SECCOMP_FD), "--"]
    return [*argv, "--"]


def unit_word(arg: str) -> str:
    """One argument as an ExecStart= word: quoted when it has blanks or quotes, '$' and '%'
    doubled (systemd expands $NAME, ${NAME} and %-specifiers in command lines; "$$" and "%%"
    are the literal characters)."""
    word = arg.replace("$", "$$").replace("%", "%%")
    if any(c in word for c in " \t'\"\\;"):
        if "'" in word:
            raise ValueError(f"cannot quote {arg!r} for an ExecStart= line")
        word = f"'{word}'"
    return word


def exec_lines(record: dict, systemd_version: int) -> list[tuple[str, str]]:
    """The ExecStartPre=/ExecStart= lines of a component's service.

    systemd >= 257: the command itself (PrivatePIDs=). Older systemd: first the checksum file
    is checked (a C binary; it names a missing or changed program or profile, and the start
    stops there), then the program is handed to bubblewrap, which runs the command.
    """
    if not uses_wrapper(systemd_version):
        return [("ExecStart", record["command"])]
    files = seccomp_files(record["config_dir"])
    check = [SHA256SUM, "--check", "--quiet", "--strict", files["checksums"]]
    start = wrapper_argv(files["bpf"])
    return [("ExecStartPre", " ".join(unit_word(a) for a in check)),
            ("ExecStart", " ".join([*(unit_word(a) for a in start), record["command"]]))]


def workload_syscalls(record: dict) -> tuple[list[str], list[str], list[str]]:
    """The component's own syscall policy, applied in order like systemd applies its lines:
    (allow list, deny list taken out of it, the component's allowances added back after it)."""
    extra = record.get("syscalls") or {}
    deny = [*SYSCALL_DENY, *(d for d in extra.get("deny", []) if d not in SYSCALL_DENY)]
    return list(SYSCALL_ALLOW), deny, list(extra.get("allow", []))


def _network(record: dict, force_private: bool) -> list[tuple[str, str]]:
    egress = (record.get("network") or {}).get("egress") or []
    if force_private or not egress:
        return [("PrivateNetwork", "yes"), ("RestrictAddressFamilies", "AF_UNIX"),
                ("IPAddressDeny", "any")]
    families = {"AF_UNIX", "AF_INET"}
    if any(":" in ep["host"] for ep in egress):
        families.add("AF_INET6")
    hosts = sorted({ep["host"] for ep in egress})
    return [("RestrictAddressFamilies", " ".join(sorted(families))),
            ("IPAddressDeny", "any"), ("IPAddressAllow", " ".join(hosts))]


def service_directives(record: dict, systemd_version: int,
                       client_groups: list[str] | None = None) -> list[tuple[str, str]]:
    """The [Service] directives of a component, in file order, for the target systemd.

    A record with `resources` (every record of normalize_components) also gets its resource
    limits and size-bounded scratch mounts; `directive_reasons` says why each limit is set."""
    profile = PROFILES[record["profile"]]
    out: list[tuple[str, str]] = [("User", record["user"]), ("Group", record["group"])]
    if client_groups:
        out.append(("SupplementaryGroups", " ".join(client_groups)))
    base = dict(BASE)
    caps = record.get("capabilities") or []
    base["CapabilityBoundingSet"] = " ".join(caps)
    base["AmbientCapabilities"] = " ".join(caps) if record.get("ambient_capabilities") else ""
    if caps:
        # A private user namespace makes every capability void on the host (a capability then
        # counts only for namespaces that user namespace owns): a component granted one runs
        # in the host's user namespace, or it would not have it at all.
        base["PrivateUsers"] = "no"
    resources = record.get("resources")
    if resources:
        # A size-bounded private tmpfs each for /tmp, /var/tmp and /dev/shm instead of
        # PrivateTmp=, which has no size and would win over a TemporaryFileSystem= on /tmp.
        base["PrivateTmp"] = "no"
        del base["TemporaryFileSystem"]
    wrapped = uses_wrapper(systemd_version)
    if wrapped:
        base["RestrictNamespaces"] = WRAPPER_NAMESPACES
        # bwrap reads /proc/sys/kernel/overflowuid to set up its user namespace.
        base["ProcSubset"] = "all"
    out += list(base.items())
    if resources:
        out += [("TemporaryFileSystem", mount) for mount in scratch_mounts(resources)]
    if not wrapped:
        out.append(("PrivatePIDs", "yes"))
    out += _network(record, profile.get("force_private_network", False))
    allow, deny, readd = workload_syscalls(record)
    if wrapped:
        # systemd's filter also covers the wrapper's set-up; the workload gets the strict
        # policy from the seccomp profile bwrap loads just before exec.
        readd = [*readd, *(s for s in WRAPPER_SYSCALLS if s not in readd)]
    # One line each: a leading '~' applies to a whole line, and later lines win.
    out.append(("SystemCallFilter", " ".join(allow)))
    out.append(("SystemCallFilter", "~" + " ".join(deny)))
    if readd:
        out.append(("SystemCallFilter", " ".join(readd)))
    out.append(("SystemCallErrorNumber", "EPERM"))
    writable = [record["state_dir"], record["log_dir"], *record.get("state_paths", [])]
    out.append(("ReadWritePaths", " ".join(writable)))
    if record.get("readonly_paths"):
        out.append(("ReadOnlyPaths", " ".join(record["readonly_paths"])))
    for cred in record.get("credentials") or []:
        key = "LoadCredentialEncrypted" if cred.get("encrypted") else "LoadCredential"
        out.append((key, f"{cred['name']}:{cred['src']}"))
    if resources:
        out += [(key, value) for key, value, _why in resource_directives(resources)]
    # The component's own extra directives last; the model refuses any the pipeline renders.
    out += [tuple(pair) for pair in record.get("directives") or []]
    return out


def directive_reasons(record: dict) -> dict[tuple[str, str], str]:
    """(directive, value) -> why, for the directives a unit renders with a comment above."""
    resources = record.get("resources")
    if not resources:
        return {}
    why = f"resources.tmp_size: {resources['reasons']['tmp_size']}"
    reasons = {("TemporaryFileSystem", mount): why for mount in scratch_mounts(resources)}
    reasons[("PrivateTmp", "no")] = ("the scratch space is the size-bounded tmpfs below "
                                     "(PrivateTmp= has no size)")
    reasons.update({(key, value): why for key, value, why in resource_directives(resources)})
    return reasons
