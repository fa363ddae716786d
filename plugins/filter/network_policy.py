# Copyright: (c) 2026, kernelfence contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Filters exposing the nftables network policy to the network_policy role."""

from __future__ import annotations

from ansible.errors import AnsibleFilterError
from ansible_collections.kernelfence.isolation.plugins.module_utils.nftables_policy import (
    PolicyError,
    parse_getent,
    render,
)


def _nftables_ruleset(records, passwd, group, options=None, header=""):
    try:
        return render(records, parse_getent(passwd), parse_getent(group), options or {},
                      header)
    except PolicyError as exc:
        raise AnsibleFilterError(str(exc)) from exc


class FilterModule:
    """Network policy filters."""

    def filters(self):
        return {"nftables_ruleset": _nftables_ruleset}
