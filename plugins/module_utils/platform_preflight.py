# Copyright: (c) 2026, kernelfence contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Can this host run the hardened components? One read of the kernel's and systemd's own files,
judged here, so a fleet rollout stops at a host it would break before anything is changed.

`read_facts()` gathers the raw text (recorded verbatim as unit-test fixtures); `problems()`
turns it into sentences that name what is missing and what to do about it.
"""

from __future__ import annotations

import os

MIN_SYSTEMD = 250  # offline `systemd-analyze security` with --threshold and --json
NATIVE_PIDS_SYSTEMD = 257  # PrivatePIDs=; older versions run the workload under bubblewrap

FILES = {
    "mounts": "/proc/self/mounts",
    "status": "/proc/self/status",
    "seccomp_actions": "/proc/sys/kernel/seccomp/actions_avail",
    "max_user_namespaces": "/proc/sys/user/max_user_namespaces",
    "unprivileged_userns_clone": "/proc/sys/kernel/unprivileged_userns_clone",
    "apparmor_restrict_userns": "/proc/sys/kernel/apparmor_restrict_unprivileged_userns",
    "cgroup_controllers": "/sys/fs/cgroup/cgroup.controllers",
    "cgroup_subtree_control": "/sys/fs/cgroup/cgroup.subtree_control",
}


# sd_booted(3): a system was booted with systemd as its init when this directory exists.
BOOTED_DIR = "/run/systemd/system"


def read_facts(root: str = "/") -> dict[str, str | bool | None]:
    """The raw text of every file the checks read (None when the file does not exist), and
    whether the host was booted with systemd (sd_booted's rule)."""
    facts: dict[str, str | bool | None] = {
        "systemd_booted": os.path.isdir(os.path.join(root, BOOTED_DIR.lstrip("/"))),
    }
    for key, path in FILES.items():
        try:
            with open(os.path.join(root, path.lstrip("/")), encoding="utf-8") as fh:
                facts[key] = fh.read()
        except OSError:
            facts[key] = None
    facts["nf_tables"] = nf_tables_support(root)
    return facts


def nf_tables_support(root: str = "/") -> str | None:
    """'loaded', 'builtin' or 'module' when the running kernel has nf_tables, else None.
    (The `nft` tool itself is installed by the network_policy role.)"""
    if os.path.isdir(os.path.join(root, "sys/module/nf_tables")):
        return "loaded"
    release = os.uname().release
    for name, kind in (("modules.builtin", "builtin"), ("modules.dep", "module")):
        try:
            with open(os.path.join(root, "lib/modules", release, name), encoding="utf-8") as fh:
                if any("/nf_tables.ko" in line for line in fh):
                    return kind
        except OSError:
            continue
    return None


def systemd_version(version_output: str) -> int | None:
    """`systemctl --version` -> 252 (first line: `systemd 252 (252.39-1~deb12u1)`)."""
    parts = version_output.split()
    return int(parts[1]) if len(parts) > 1 and parts[0] == "systemd" and parts[1].isdigit() \
        else None


def _cgroup_v2_only(mounts: str | None) -> bool:
    rows = [line.split() for line in (mounts or "").splitlines()]
    on_cgroup = [r for r in rows if len(r) > 2 and r[1] == "/sys/fs/cgroup"]
    return bool(on_cgroup) and on_cgroup[-1][2] == "cgroup2"


def _status_field(status: str | None, key: str) -> str | None:
    for line in (status or "").splitlines():
        name, _sep, value = line.partition(":")
        if name == key:
            return value.strip()
    return None


def problems(facts: dict, version_output: str, nft_rc: int | None, nft_err: str = "") -> list[str]:
    """One sentence per requirement this host misses, naming the fix; [] when it is ready.

    A host not booted with systemd is said first, and alone of the init's concerns: the cgroup
    layout is then the other init's, so a cgroup boot option would be the wrong advice.
    (`facts` without the key, recorded before it was read, count as booted.)"""
    out = []
    booted = facts.get("systemd_booted", True)
    if not booted:
        out.append(f"systemd: this host was not booted with systemd as its init (PID 1): "
                   f"{BOOTED_DIR} does not exist, so no unit can be installed, started or "
                   "sandboxed (a container or chroot without systemd, or another init). Fix: "
                   "run the components on a host or VM booted with systemd (e.g. Debian 12 "
                   "or 13), or a container started with systemd as PID 1")
    version = systemd_version(version_output)
    if version is None:
        out.append(f"systemd: cannot read the version from `systemctl --version` "
                   f"({version_output.strip()[:80]!r}). Fix: install systemd (the components "
                   "need it as PID 1)")
    elif version < MIN_SYSTEMD:
        out.append(f"systemd {version} is older than {MIN_SYSTEMD}, the oldest this collection "
                   "verifies and scores units with. Fix: upgrade the host (Debian 12 ships 252)")
    if booted and not _cgroup_v2_only(facts.get("mounts")):
        out.append("cgroup v2: /sys/fs/cgroup is not a cgroup2 (unified) mount, so per-unit "
                   "resource control and the cgroup checks cannot work. Fix: boot with "
                   "systemd.unified_cgroup_hierarchy=1 (the default since systemd 247)")
    if _status_field(facts.get("status"), "Seccomp") is None:
        out.append("seccomp: the kernel has no seccomp (no Seccomp: line in /proc/self/status), "
                   "so SystemCallFilter= would not be enforced. Fix: a kernel with "
                   "CONFIG_SECCOMP_FILTER=y")
    else:
        actions = (facts.get("seccomp_actions") or "").split()
        if "errno" not in actions:
            out.append("seccomp: the kernel's filter mode cannot return an errno "
                       f"(actions_avail: {' '.join(actions) or 'missing'}). Fix: a kernel with "
                       "CONFIG_SECCOMP_FILTER=y")
    if version is not None and version < NATIVE_PIDS_SYSTEMD:
        needs = (f"systemd {version} has no PrivatePIDs=, so the components run under "
                 "bubblewrap, which needs unprivileged user namespaces")
        max_ns = (facts.get("max_user_namespaces") or "").strip()
        if max_ns in ("", "0"):
            out.append(f"user namespaces: {needs}, and user.max_user_namespaces is "
                       f"{max_ns or 'missing'}. Fix: sysctl -w user.max_user_namespaces=15000 "
                       "(and persist it in /etc/sysctl.d)")
        if (facts.get("unprivileged_userns_clone") or "1").strip() == "0":
            out.append(f"user namespaces: {needs}, and kernel.unprivileged_userns_clone is 0. "
                       "Fix: sysctl -w kernel.unprivileged_userns_clone=1 (persist it in "
                       "/etc/sysctl.d)")
        if (facts.get("apparmor_restrict_userns") or "0").strip() == "1":
            out.append(f"user namespaces: {needs}, and AppArmor restricts them "
                       "(kernel.apparmor_restrict_unprivileged_userns=1). Fix: give "
                       "/usr/bin/bwrap an AppArmor profile with `userns,` or set the sysctl to 0")
    if nft_rc is None and not facts.get("nf_tables"):
        out.append("nftables: the running kernel has no nf_tables (not loaded, not built in, "
                   "no module), so the network policy cannot be loaded. Fix: a kernel with "
                   "CONFIG_NF_TABLES (the network_policy role installs the nft tool itself)")
    elif nft_rc:
        out.append(f"nftables: `nft list tables` failed ({nft_err.strip()[:160]}): the kernel "
                   "cannot load the network policy. Fix: a kernel with nf_tables "
                   "(modprobe nf_tables)")
    if _cgroup_v2_only(facts.get("mounts")):
        out += cgroup_controller_problems(facts.get("cgroup_controllers"),
                                          facts.get("cgroup_subtree_control"))
    return out


# The controllers the components' resource limits need: memory (MemoryMax=, MemoryHigh=,
# MemoryLow=, MemorySwapMax=, the tmpfs scratch space), pids (TasksMax=), cpu (CPUWeight=,
# CPUQuota=), io (IOWeight=).
RESOURCE_CONTROLLERS = ("memory", "pids", "cpu", "io")
CONTROLLER_DIRECTIVES = {"memory": "MemoryMax=", "pids": "TasksMax=", "cpu": "CPUWeight=",
                         "io": "IOWeight="}


def cgroup_controller_problems(controllers: str | None,
                               subtree_control: str | None) -> list[str]:
    """A sentence naming the resource controllers the units cannot get, with the fix.

    `cgroup.controllers` of the root lists what the kernel offers to this hierarchy: a
    controller missing there cannot be enabled by anyone (bound to a cgroup v1 hierarchy,
    disabled on the kernel command line, or not delegated to a container). One that is offered
    but not yet in `cgroup.subtree_control` is fine: systemd writes it there itself when a unit
    sets a limit that needs it (on a fresh host cpu and io are usually not enabled until then).
    """
    if controllers is None:  # no cgroup2 at /sys/fs/cgroup: the cgroup v2 check says so
        return []
    offered = controllers.split()
    missing = [c for c in RESOURCE_CONTROLLERS if c not in offered]
    if not missing:
        return []
    unenforced = ", ".join(CONTROLLER_DIRECTIVES[c] for c in missing)
    enabled = (subtree_control or "").split()
    return [f"cgroup controllers: {', '.join(missing)} not available at /sys/fs/cgroup "
            f"(cgroup.controllers: {' '.join(offered) or 'empty'}; cgroup.subtree_control: "
            f"{' '.join(enabled) or 'empty'}), so {unenforced} would not be enforced. Fix: "
            "boot without cgroup_disable= for them (some kernels need cgroup_enable=memory on "
            "the command line) and without cgroup v1 mounts that bind them "
            "(systemd.unified_cgroup_hierarchy=1); in a container, delegate them to it"]
