# Copyright: (c) 2026, kernelfence contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Filters rendering the isolation audit on the controller."""

from __future__ import annotations

import json

from ansible.errors import AnsibleFilterError
from ansible_collections.kernelfence.isolation.plugins.module_utils.audit import (
    html_report,
    junit_xml,
    validate_attacks,
)


def _attacks(text):
    """Attack results from the text of a JSON file (empty text: none)."""
    if not str(text).strip():
        return []
    try:
        return validate_attacks(json.loads(text))
    except ValueError as exc:
        raise AnsibleFilterError(f"kernelfence_audit_attacks_file: {exc}") from exc


def _junit(evidence):
    return junit_xml(evidence)


def _html(evidences):
    return html_report(list(evidences))


class FilterModule:
    """Audit report filters."""

    def filters(self):
        return {"audit_attacks": _attacks, "audit_junit": _junit, "audit_html": _html}
