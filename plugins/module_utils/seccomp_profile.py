# Copyright: (c) 2026, kernelfence contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The component's syscall policy as a standalone OCI seccomp profile.

The groups (@system-service, @privileged, ...) are expanded with the target's own
`systemd-analyze syscall-filter` output, so the profile carries exactly the policy systemd
applies on that host: the allow list minus the deny list, everything else failing with EPERM.
"""

from __future__ import annotations

import errno
import hashlib
import os


def parse_syscall_groups(text: str) -> dict[str, list[str]]:
    """{'@group': [members, including nested '@groups']} from `systemd-analyze syscall-filter`."""
    groups: dict[str, list[str]] = {}
    current = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if not raw.startswith((" ", "\t")) and line.startswith("@"):
            current = line.split()[0]
            groups[current] = []
        elif current is not None and not line.startswith(("-", "Ungrouped")):
            groups[current].append(line.split()[0])
    return groups


def expand(names: list[str], groups: dict[str, list[str]]) -> set[str]:
    """Syscall names of a list of names and @groups (nested groups included)."""
    out: set[str] = set()
    pending = list(names)
    seen: set[str] = set()
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        if name.startswith("@"):
            if name not in groups:
                raise ValueError(f"unknown syscall group {name}")
            pending.extend(groups[name])
        else:
            out.add(name)
    return out


# Namespace creation is never part of a workload's policy (systemd's RestrictNamespaces=yes):
# clone() is allowed only without CLONE_NEW* flags, clone3() (whose flags seccomp cannot
# inspect) fails with ENOSYS so libc falls back to clone(), and unshare()/setns() are denied.
CLONE_NEW_FLAGS = (0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000 | 0x20000000
                   | 0x40000000 | 0x00000080)
NAMESPACE_SYSCALLS = {"clone", "clone3", "unshare", "setns"}


def oci_profile(allow: list[str], deny: list[str], groups: dict[str, list[str]],
                readd: list[str] | None = None) -> dict:
    """An OCI runtime-spec seccomp profile: (allow - deny) + readd, EPERM for anything else."""
    allowed = (expand(allow, groups) - expand(deny, groups)) | expand(readd or [], groups)
    rules: list[dict] = [{"names": sorted(allowed - NAMESPACE_SYSCALLS),
                          "action": "SCMP_ACT_ALLOW"}]
    if "clone" in allowed:
        rules.append({"names": ["clone"], "action": "SCMP_ACT_ALLOW",
                      "args": [{"index": 0, "value": CLONE_NEW_FLAGS, "valueTwo": 0,
                                "op": "SCMP_CMP_MASKED_EQ"}]})
    if "clone3" in allowed:
        rules.append({"names": ["clone3"], "action": "SCMP_ACT_ERRNO",
                      "errnoRet": errno.ENOSYS})
    return {
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": errno.EPERM,
        "architectures": ["SCMP_ARCH_X86_64"],
        "syscalls": rules,
    }


# The compiled program (systemd < 257): libseccomp turns the profile into the BPF program that
# bubblewrap loads with --seccomp FD just before it execs the workload. It is compiled at deploy
# time on the target (its libseccomp, its architecture) and stored beside the profile with a
# checksum file that the unit checks before every start (sha256sum --check), so a start costs
# no interpreter and a missing or changed program or profile stops the service.
ACTIONS = ("SCMP_ACT_ALLOW", "SCMP_ACT_ERRNO")
COMPARISONS = ("SCMP_CMP_MASKED_EQ",)


class ProfileError(ValueError):
    """A profile the compiler does not accept; the text names the field and the fix."""


def check_profile(profile: object) -> None:
    """Raise ProfileError unless the profile is one the BPF compiler turns into a program
    (errno default action; allow and errno rules; masked-equal argument comparisons)."""
    if not isinstance(profile, dict):
        raise ProfileError("the profile is not a JSON object")
    if profile.get("defaultAction") != "SCMP_ACT_ERRNO":
        raise ProfileError(f"defaultAction {profile.get('defaultAction')!r}: only "
                           "SCMP_ACT_ERRNO is supported")
    errno_ret = profile.get("defaultErrnoRet", errno.EPERM)
    if not isinstance(errno_ret, int) or isinstance(errno_ret, bool) or not 0 < errno_ret < 4096:
        raise ProfileError(f"defaultErrnoRet {errno_ret!r}: an errno number 1-4095")
    rules = profile.get("syscalls")
    if not isinstance(rules, list):
        raise ProfileError("syscalls: a list of rules is required")
    for i, rule in enumerate(rules):
        where = f"syscalls[{i}]"
        if not isinstance(rule, dict):
            raise ProfileError(f"{where}: a rule is an object")
        if rule.get("action") not in ACTIONS:
            raise ProfileError(f"{where}.action {rule.get('action')!r}: one of "
                               f"{', '.join(ACTIONS)}")
        names = rule.get("names")
        if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
            raise ProfileError(f"{where}.names: a list of syscall names")
        ret = rule.get("errnoRet", errno.EPERM)
        if not isinstance(ret, int) or isinstance(ret, bool) or not 0 < ret < 4096:
            raise ProfileError(f"{where}.errnoRet {ret!r}: an errno number 1-4095")
        for j, arg in enumerate(rule.get("args") or []):
            if not isinstance(arg, dict) or arg.get("op") not in COMPARISONS:
                op = arg.get("op") if isinstance(arg, dict) else arg
                raise ProfileError(f"{where}.args[{j}].op {op!r}: only "
                                   f"{', '.join(COMPARISONS)} is supported")
            for key in ("index", "value", "valueTwo"):
                value = arg.get(key, 0)
                if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                    raise ProfileError(f"{where}.args[{j}].{key} {value!r}: a number >= 0")


def compile_bpf(profile: dict) -> tuple[bytes, list[str]]:
    """The profile's BPF program as bubblewrap's --seccomp reads it, and the names this
    libseccomp does not know on this architecture (skipped, as systemd skips them).

    Needs libseccomp's Python binding (Debian: python3-seccomp); ImportError without it.
    """
    # Only the target needs the binding, and only here: imported on use.
    import seccomp

    check_profile(profile)
    filt = seccomp.SyscallFilter(
        defaction=seccomp.ERRNO(profile.get("defaultErrnoRet", errno.EPERM)))
    unknown: set[str] = set()
    for rule in profile["syscalls"]:
        if rule["action"] == "SCMP_ACT_ALLOW":
            action = seccomp.ALLOW
        else:
            action = seccomp.ERRNO(rule.get("errnoRet", errno.EPERM))
        args = [seccomp.Arg(arg["index"], seccomp.MASKED_EQ, arg["value"], arg.get("valueTwo", 0))
                for arg in rule.get("args") or []]
        for name in rule["names"]:
            try:
                filt.add_rule(action, name, *args)
            except (RuntimeError, ValueError):
                unknown.add(name)
    fd = os.memfd_create("kf-seccomp", os.MFD_CLOEXEC)
    with os.fdopen(fd, "w+b") as out:
        filt.export_bpf(out)
        out.seek(0)
        program = out.read()
    if not program or len(program) % 8:
        raise ProfileError(f"libseccomp exported {len(program)} bytes, not a BPF program")
    return program, sorted(unknown)


def bpf_checksums(bpf_path: str, program: bytes, profile_path: str, profile_text: str) -> str:
    """The checksum file the unit verifies before each start (`sha256sum --check`): the
    program, and the profile it was compiled from."""
    return (f"{hashlib.sha256(program).hexdigest()}  {bpf_path}\n"
            f"{hashlib.sha256(profile_text.encode()).hexdigest()}  {profile_path}\n")
