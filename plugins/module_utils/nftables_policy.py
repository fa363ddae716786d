# Copyright: (c) 2026, kernelfence contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The per-component network policy as one nftables table of our own.

The rendered file is one `nft -f` transaction that touches nothing but `table inet kernelfence`:
it creates the table if it is missing, deletes it, and defines it anew, so a reload replaces
our rules atomically and never flushes the ruleset or another table. If any line fails, the
kernel keeps the previous state of the table.

Packets are matched on the identity of the socket that sends them (`meta skuid`, then
`meta skgid`), in the output hook only. Traffic of any other uid or gid (the operator's SSH
session, root, other services) matches no rule of ours and leaves our table accepted; there
is no input chain and no drop policy, so this table cannot lock anyone out.

Why not `socket cgroupv2`: nft resolves a cgroup path to the cgroup's inode number when the
rule is loaded. A kf-*.service cgroup exists only while its unit runs, so the table would fail
to load at boot (before the units start) and would silently stop matching each time a unit is
restarted (its new cgroup has a new inode). The uid and gid of a component are stable and
exist before its unit starts; every component has its own.

Inbound connections are handled in the same output chain: a packet a component sends in the
*reply* direction of a connection belongs to a connection someone else opened (the SYN-ACK of
a listener is matched too: the kernel attributes it to the listening socket). Such packets are
dropped unless the component's `network.ingress` admits the port, for loopback peers only.
"""

from __future__ import annotations

import re

TABLE_FAMILY = "inet"
TABLE_NAME = "kernelfence"
TABLE = f"{TABLE_FAMILY} {TABLE_NAME}"

DEFAULTS = {
    "log_rate": "6/minute",
    "log_burst": 5,
    "log_level": "warn",
    "reject_with": "icmpx admin-prohibited",
}
# Option values are passed to nft as they are (nft -c is the judge of their meaning), but
# must stay one token sequence inside one statement: no newline, no statement separator, no
# quote, no comment, no block.
_SAFE_OPTION = re.compile(r"^[A-Za-z0-9/ _.-]{1,64}$")

LOOPBACK = {"ip": "127.0.0.0/8", "ip6": "::1"}


class PolicyError(ValueError):
    """A policy that cannot be rendered; the text names the field and the fix."""


def _option(options: dict, key: str) -> str:
    value = str(options.get(key, DEFAULTS[key]))
    if not _SAFE_OPTION.match(value):
        raise PolicyError(f"network_policy_{key}: {value!r} is not a single nft option value. "
                          f"Fix: use e.g. {DEFAULTS[key]!r}")
    return value


def parse_getent(text: str) -> dict[str, int]:
    """Name to id from `getent passwd` or `getent group` output."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        fields = line.split(":")
        if len(fields) >= 3 and fields[2].isdigit():
            out[fields[0]] = int(fields[2])
    return out


def counter_names(record: dict) -> dict[str, str]:
    """Names of the component's named counters (what the tests and operators read)."""
    return {"rejected": f"{record['name']}_rejected",
            "ingress_dropped": f"{record['name']}_ingress_dropped"}


def _egress_rules(record: dict) -> list[str]:
    if record["profile"] == "model_backend":
        # Defence in depth behind PrivateNetwork=: the profile never has network, egress or not.
        return []
    rules = []
    for ep in record["network"]["egress"]:
        rules.append(f"{ep['family']} daddr {ep['host']} {ep['proto']} dport {ep['port']} accept")
    return rules


def _ingress_rules(record: dict) -> list[str]:
    rules = []
    for entry in record["network"].get("ingress", []):
        for family, loopback in LOOPBACK.items():
            rules.append(f"ct direction reply {family} daddr {loopback} "
                         f"{entry['proto']} sport {entry['port']} accept")
    return rules


def component_chain(record: dict, options: dict | None = None) -> list[str]:
    """The rules of the component's chain, in order."""
    options = options or {}
    rate, burst = _option(options, "log_rate"), _option(options, "log_burst")
    level, reject = _option(options, "log_level"), _option(options, "reject_with")
    counters = counter_names(record)
    limit = f"limit rate {rate} burst {burst} packets"
    name = record["name"]
    return [
        *_ingress_rules(record),
        f'ct direction reply {limit} log prefix "kernelfence {name} ingress drop: " '
        f"level {level} flags skuid",
        f'ct direction reply counter name "{counters["ingress_dropped"]}" drop',
        *_egress_rules(record),
        f'{limit} log prefix "kernelfence {name} egress reject: " level {level} flags skuid',
        f'counter name "{counters["rejected"]}" reject with {reject}',
    ]


def identities(records: list[dict], uids: dict[str, int],
               gids: dict[str, int]) -> list[tuple[dict, int, int]]:
    """Each record with its numeric uid and gid; a missing account is an error."""
    out = []
    for rec in records:
        missing = []
        if rec["user"] not in uids:
            missing.append(f"user {rec['user']!r}")
        if rec["group"] not in gids:
            missing.append(f"group {rec['group']!r}")
        if missing:
            raise PolicyError(
                f"kernelfence_components[{rec['name']}].user: {' and '.join(missing)} does not "
                "exist on the host. Fix: run kernelfence.isolation.component_identity first "
                "(playbooks/site.yml does)")
        out.append((rec, uids[rec["user"]], gids[rec["group"]]))
    return out


def render(records: list[dict], uids: dict[str, int], gids: dict[str, int],
           options: dict | None = None, header: str = "") -> str:
    """The whole nft file: one transaction that replaces `table inet kernelfence` only."""
    ids = identities(records, uids, gids)
    lines = [line.rstrip() for line in header.splitlines()]
    lines += [
        "# One transaction: make sure our table exists, delete it, define it anew.",
        "# Nothing outside this table is flushed or changed.",
        f"table {TABLE} {{}}",
        f"delete table {TABLE}",
        f"table {TABLE} {{",
    ]
    for entry in ids:
        for counter in counter_names(entry[0]).values():
            lines.append(f"\tcounter {counter} {{}}")
    for rec, uid, gid in ids:
        lines.append("")
        lines.append(f"\t# {rec['profile']} component {rec['name']} "
                     f"({rec['user']} uid {uid}, {rec['group']} gid {gid})")
        lines.append(f"\tchain {rec['name']} {{")
        lines += [f"\t\t{rule}" for rule in component_chain(rec, options)]
        lines.append("\t}")
    lines += [
        "",
        "\t# Only sockets of a component's user or group are matched; everything else",
        "\t# (the operator's SSH session included) passes this table untouched.",
        "\tchain output {",
        "\t\ttype filter hook output priority filter; policy accept;",
    ]
    if ids:
        uid_map = ", ".join(f"{uid} : jump {rec['name']}" for rec, uid, gid in ids)
        gid_map = ", ".join(f"{gid} : jump {rec['name']}" for rec, uid, gid in ids)
        lines.append(f"\t\tmeta skuid vmap {{ {uid_map} }}")
        lines.append(f"\t\tmeta skgid vmap {{ {gid_map} }}")
    lines += ["\t}", "}", ""]
    return "\n".join(lines)
