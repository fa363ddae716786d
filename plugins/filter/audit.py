# Copyright: (c) 2026, kernelfence contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Filters rendering the isolation audit on the controller."""

from __future__ import annotations

import json
import os

from ansible.errors import AnsibleFilterError
from ansible_collections.kernelfence.isolation.plugins.module_utils.audit import (
    collection_version,
    html_report,
    junit_xml,
    validate_attacks,
)

# This file is plugins/filter/audit.py of the collection: its root is two levels up.
COLLECTION_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _version() -> str:
    """The version of the collection these filters run from (MANIFEST.json or galaxy.yml)."""
    try:
        return collection_version(COLLECTION_ROOT)["version"]
    except ValueError as exc:
        raise AnsibleFilterError(f"audit report: {exc}") from exc


def _attacks(text):
    """Attack results from the text of a JSON file (empty text: none)."""
    if not str(text).strip():
        return []
    try:
        return validate_attacks(json.loads(text))
    except ValueError as exc:
        raise AnsibleFilterError(f"kernelfence_audit_attacks_file: {exc}") from exc


def _junit(evidence):
    return junit_xml(evidence, version=_version())


def _html(evidences):
    return html_report(list(evidences), version=_version())


class FilterModule:
    """Audit report filters."""

    def filters(self):
        return {"audit_attacks": _attacks, "audit_junit": _junit, "audit_html": _html}
