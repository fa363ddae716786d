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
    service_directives,
    threshold,
    uses_wrapper,
    wrapper_argv,
)


def _normalize(components, roots=None, writable_roots=None):
    try:
        return normalize_components(components, roots, writable_roots)
    except ModelError as exc:
        raise AnsibleFilterError(str(exc)) from exc


def _directories(records):
    return directories(records)


def _service_directives(record, systemd_version):
    pairs = service_directives(record, int(systemd_version), record.get("client_of"))
    return [list(pair) for pair in pairs]


def _exec_start(record, systemd_version):
    prefix = wrapper_argv() if uses_wrapper(int(systemd_version)) else []
    return " ".join([*prefix, record["command"]])


def _exposure_threshold(record, systemd_version):
    return threshold(record["profile"], int(systemd_version))


class FilterModule:
    """Component model filters."""

    def filters(self):
        return {
            "normalize_components": _normalize,
            "component_directories": _directories,
            "service_directives": _service_directives,
            "exec_start": _exec_start,
            "exposure_threshold": _exposure_threshold,
        }
