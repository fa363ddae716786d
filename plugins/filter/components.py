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


def _normalize(components, roots=None, writable_roots=None):
    try:
        return normalize_components(components, roots, writable_roots)
    except ModelError as exc:
        raise AnsibleFilterError(str(exc)) from exc


def _directories(records):
    return directories(records)


class FilterModule:
    """Component model filters."""

    def filters(self):
        return {
            "normalize_components": _normalize,
            "component_directories": _directories,
        }
