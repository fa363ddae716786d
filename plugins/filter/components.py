# Copyright: (c) 2026, kernelfence contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Filters exposing the component model to the roles."""

from __future__ import annotations

from ansible.errors import AnsibleFilterError
from ansible_collections.kernelfence.isolation.plugins.module_utils.component_model import (
    ModelError,
    directories,
    normalize_components,
)
from ansible_collections.kernelfence.isolation.plugins.module_utils.hardening import (
    exec_lines,
    service_directives,
    threshold,
    uses_wrapper,
    workload_syscalls,
)
from ansible_collections.kernelfence.isolation.plugins.module_utils.seccomp_profile import (
    oci_profile,
    parse_syscall_groups,
)


def _normalize(components, roots=None, writable_roots=None):
    try:
        return normalize_components(components, roots, writable_roots)
    except ModelError as exc:
        raise AnsibleFilterError(str(exc)) from exc


def _account(record, shell):
    return {"name": record["user"], "group": record["group"], "home": record["state_dir"],
            "shell": shell,
            "comment": f"kernelfence {record['profile']} component {record['name']}"}


def _directories(records):
    return directories(records)


def _service_directives(record, systemd_version):
    if record.get("unit") and not record.get("command") and uses_wrapper(int(systemd_version)):
        raise AnsibleFilterError(
            f"kernelfence_components[{record['name']}].command: systemd {systemd_version} has no "
            f"PrivatePIDs=, so the PID namespace of {record['unit']} needs bubblewrap around its "
            "command. Fix: set `command` to the unit's ExecStart command line")
    pairs = service_directives(record, int(systemd_version), record.get("client_of"))
    return [list(pair) for pair in pairs]


def _exec_start(record, systemd_version):
    return next(v for k, v in exec_lines(record, int(systemd_version)) if k == "ExecStart")


def _exec_start_pre(record, systemd_version):
    return [v for k, v in exec_lines(record, int(systemd_version)) if k == "ExecStartPre"]


def _seccomp_profile(record, syscall_filter_output):
    allow, deny, readd = workload_syscalls(record)
    try:
        return oci_profile(allow, deny, parse_syscall_groups(syscall_filter_output), readd)
    except ValueError as exc:
        raise AnsibleFilterError(
            f"kernelfence_components[{record['name']}].syscalls: {exc}. Fix: use a group "
            "that `systemd-analyze syscall-filter` lists on the target") from exc


def _exposure_threshold(record, systemd_version):
    return threshold(record["profile"], int(systemd_version))


class FilterModule:
    """Component model filters."""

    def filters(self):
        return {
            "normalize_components": _normalize,
            "component_account": _account,
            "component_directories": _directories,
            "service_directives": _service_directives,
            "exec_start": _exec_start,
            "exec_start_pre": _exec_start_pre,
            "exposure_threshold": _exposure_threshold,
            "seccomp_profile": _seccomp_profile,
        }
