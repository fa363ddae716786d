# Copyright: (c) 2026, kernelfence contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Compare processes read from /proc (proc_isolation) with an isolation policy.

A policy says what the kernel must show for every process and every thread of a unit:

    capabilities: {effective: [], permitted: [], inheritable: [], bounding: [], ambient: []}
    no_new_privs: true
    seccomp: true                   # seccomp mode 2 (filter) with at least one filter
    private_namespaces: [net, ipc]  # namespaces that must not be PID 1's
    forbidden_uids: [0]             # no real/effective/saved/fs uid may be one of these

Capability sets list what is *allowed*: observing a capability outside the list is a
violation; a set left out of the policy is not checked. Each violation is one diff entry with
the pid, the thread, the field, the expected and the observed value.
"""

from __future__ import annotations

from ansible_collections.kernelfence.isolation.plugins.module_utils.component_model import (
    CAPABILITIES,
)
from ansible_collections.kernelfence.isolation.plugins.module_utils.proc_isolation import (
    CAP_SETS,
    NAMESPACES,
    capability_names,
)

POLICY_KEYS = ("capabilities", "no_new_privs", "seccomp", "private_namespaces", "forbidden_uids")


class PolicyError(ValueError):
    """The policy itself is malformed; the message names the field and the fix."""


def normalize_policy(policy: dict) -> dict:
    """The policy with capability names as CAP_X; raises PolicyError on any unknown field."""
    unknown = sorted(set(policy) - set(POLICY_KEYS))
    if unknown:
        raise PolicyError(f"policy: unknown field(s) {', '.join(unknown)}. "
                          f"Fix: use only {', '.join(POLICY_KEYS)}")
    result = dict(policy)
    caps = policy.get("capabilities") or {}
    if not isinstance(caps, dict):
        raise PolicyError("policy.capabilities must map a set name to the allowed capabilities")
    sets = {}
    for name, allowed in caps.items():
        if name not in CAP_SETS.values():
            raise PolicyError(f"policy.capabilities.{name}: unknown capability set. "
                              f"Fix: use {', '.join(CAP_SETS.values())}")
        names = []
        for cap in allowed or []:
            bare = str(cap).upper().removeprefix("CAP_")
            if bare not in CAPABILITIES:
                raise PolicyError(f"policy.capabilities.{name}: unknown capability '{cap}'. "
                                  "Fix: use a name from capabilities(7), e.g. CAP_NET_RAW")
            names.append(f"CAP_{bare}")
        sets[name] = sorted(names)
    result["capabilities"] = sets
    for ns in policy.get("private_namespaces") or []:
        if ns not in NAMESPACES:
            raise PolicyError(f"policy.private_namespaces: unknown namespace '{ns}'. "
                              f"Fix: use {', '.join(NAMESPACES)}")
    return result


def _diff(process: dict, tid: int | None, field: str, expected, observed) -> dict:
    return {"pid": process["pid"], "tid": tid, "name": process.get("name"), "field": field,
            "expected": expected, "observed": observed}


def _thread_diffs(process: dict, thread: dict, policy: dict) -> list[dict]:
    diffs = []
    tid = thread.get("tid")
    for name, allowed in policy["capabilities"].items():
        # Names, whether the record lists them or says "all"/"none" beside its raw masks.
        observed = capability_names(thread, name)
        if observed is None:
            diffs.append(_diff(process, tid, f"capabilities.{name}", allowed,
                               "not shown by this kernel"))
        elif set(observed) - set(allowed):
            diffs.append(_diff(process, tid, f"capabilities.{name}", allowed, observed))
    if policy.get("no_new_privs") and thread["no_new_privs"] is not True:
        diffs.append(_diff(process, tid, "no_new_privs", True, thread["no_new_privs"]))
    if policy.get("seccomp"):
        seccomp = thread["seccomp"]
        if seccomp["mode"] != "filter" or seccomp["filters"] == 0:
            diffs.append(_diff(process, tid, "seccomp", {"mode": "filter", "filters": ">= 1"},
                               seccomp))
    forbidden = set(policy.get("forbidden_uids") or [])
    if forbidden and thread["uids"] is not None:
        bad = {k: v for k, v in thread["uids"].items() if v in forbidden}
        if bad:
            diffs.append(_diff(process, tid, "uids", f"none of {sorted(forbidden)}",
                               thread["uids"]))
    return diffs


def compare(processes: list[dict], policy: dict) -> list[dict]:
    """Every difference between the processes (each thread) and the normalized policy."""
    diffs = []
    for process in processes:
        # The process's own fields are its main thread's; "threads" holds the others.
        for thread in [dict(process, tid=process["pid"]), *(process.get("threads") or [])]:
            diffs.extend(_thread_diffs(process, thread, policy))
        for ns in policy.get("private_namespaces") or []:
            if process["namespaces"].get(ns) is None:
                diffs.append(_diff(process, None, f"namespaces.{ns}", "private",
                                   "unreadable or absent"))
            elif ns in process["namespaces_shared_with_init"]:
                diffs.append(_diff(process, None, f"namespaces.{ns}", "private",
                                   f"shared with PID 1 ({process['namespaces'][ns]})"))
    return diffs


def format_diffs(diffs: list[dict], limit: int = 20) -> str:
    lines = [f"pid {d['pid']}{'' if d['tid'] in (None, d['pid']) else ' tid ' + str(d['tid'])}"
             f" ({d['name']}) {d['field']}: expected {d['expected']}, observed {d['observed']}"
             for d in diffs[:limit]]
    if len(diffs) > limit:
        lines.append(f"... and {len(diffs) - limit} more")
    return "; ".join(lines)


def resource_diffs(processes: list[dict], expected_for, proc_root: str = "/proc",
                   cgroup_root: str = "/sys/fs/cgroup", host: dict | None = None) -> list[dict]:
    """Every live limit of each process that differs from what it must be.

    expected_for(process) gives the process's expected limits (live_limits.expected_limits),
    or None when nothing is promised for it. One diff per process and limit, field
    `resources.<limit>` (e.g. resources.memory.max), with the expected and observed values as
    the kernel shows them. A process that exited meanwhile has no diff.
    """
    from ansible_collections.kernelfence.isolation.plugins.module_utils.live_limits import (
        compare_limits,
        host_facts,
        read_live,
    )

    host = host or host_facts(proc_root, cgroup_root)
    diffs = []
    for process in processes:
        expected = expected_for(process)
        if not expected:
            continue
        live, cgroups = read_live([process["pid"]], proc_root, cgroup_root)
        if not live:
            continue
        for result in compare_limits(expected, live, cgroups, host):
            if not result["passed"]:
                diffs.append(_diff(process, None, f"resources.{result['name']}",
                                   result["expected"], result["observed"][0]))
    return diffs
