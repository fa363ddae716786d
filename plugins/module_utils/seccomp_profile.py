# Copyright: (c) 2026, kernelfence contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The component's syscall policy as a standalone OCI seccomp profile.

The groups (@system-service, @privileged, ...) are expanded with the target's own
`systemd-analyze syscall-filter` output, so the profile carries exactly the policy systemd
applies on that host: the allow list minus the deny list, everything else failing with EPERM.
"""

from __future__ import annotations

import errno


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
