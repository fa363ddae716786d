# Copyright: (c) 2026, kernelfence contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Filters exposing the component model to the roles."""

from __future__ import annotations

import copy
from functools import cache
from pathlib import Path

import yaml
from ansible.errors import AnsibleFilterError
from ansible.module_utils.common.arg_spec import ArgumentSpecValidator
from ansible_collections.kernelfence.isolation.plugins.module_utils.component_model import (
    ModelError,
    check_fields,
    component_label,
    directories,
    identity_requirements,
    missing_identities,
    missing_named_units,
    normalize_components,
    restart_targets,
    wrapper_capability_problems,
)
from ansible_collections.kernelfence.isolation.plugins.module_utils.hardening import (
    directive_reasons,
    exec_lines,
    service_directives,
    threshold,
    uses_wrapper,
    workload_syscalls,
)
from ansible_collections.kernelfence.isolation.plugins.module_utils.resource_limits import (
    storage_mounts,
)
from ansible_collections.kernelfence.isolation.plugins.module_utils.seccomp_profile import (
    oci_profile,
    parse_syscall_groups,
)

SPEC_FILE = Path(__file__).resolve().parents[2] / "roles/component_model/meta/argument_specs.yml"


@cache
def _preflight_spec() -> dict:
    """The options of component_model's `preflight` entry point (its argument spec)."""
    spec = yaml.safe_load(SPEC_FILE.read_text(encoding="utf-8"))
    return spec["argument_specs"]["preflight"]["options"]


def _spec_errors(components, roots, writable_roots) -> list[str]:
    """The argument spec's own checks (types, required fields), each error prefixed with the
    component it is about. The public roles include the preflight with rolespec_validate off:
    ansible's validation would name neither the component's index nor its name, and prints
    the whole spec with the error."""
    options = copy.deepcopy(_preflight_spec())
    component_spec = options["kernelfence_components"].pop("options")
    top = {"kernelfence_components": components}
    if roots is not None:
        top["component_model_roots"] = roots
    if writable_roots is not None:
        top["component_model_writable_roots"] = writable_roots
    errors = [str(e) for e in ArgumentSpecValidator(options).validate(top).error_messages]
    if errors:
        return errors
    for index, raw in enumerate(components):
        where = component_label(index, raw)
        errors += [f"{where}: {e}" for e in
                   ArgumentSpecValidator(component_spec).validate(raw).error_messages]
    return errors


# Where the per-path ext4 images of the components live (root-only).
STORAGE_ROOT = "/var/lib/kernelfence-storage"


def _normalize(components, roots=None, writable_roots=None):
    try:
        # Unknown fields first (the closest field named), then types, then the model's rules.
        check_fields(components)
        errors = _spec_errors(components, roots, writable_roots)
        if errors:
            raise ModelError(" | ".join(errors[:5]) + ". Fix: see the component model in "
                             "roles/component_model/meta/argument_specs.yml")
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
    reasons = directive_reasons(record)
    return [[key, value, reasons.get((key, value), "")] for key, value in pairs]


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


def _storage_mounts(records, image_root=STORAGE_ROOT):
    if isinstance(records, dict):
        records = [records]
    return [m for record in records if record.get("resources")
            for m in storage_mounts(record, image_root)]


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
            "component_storage_mounts": _storage_mounts,
            "exec_start": _exec_start,
            "exec_start_pre": _exec_start_pre,
            "exposure_threshold": _exposure_threshold,
            "seccomp_profile": _seccomp_profile,
            "identity_requirements": identity_requirements,
            "missing_identities": missing_identities,
            "restart_targets": restart_targets,
            "wrapper_capability_problems": wrapper_capability_problems,
            "missing_named_units": missing_named_units,
        }
