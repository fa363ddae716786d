# Copyright: (c) 2026, kernelfence contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Parsers for `systemd-analyze verify` and `systemd-analyze security` output.

systemd loads a unit with an unknown key or an unparsable value and only warns; `verify` still
exits 0. These parsers turn every such warning into a finding, so a unit that systemd would run
with part of its hardening silently ignored is reported as an error, never passed.
"""

from __future__ import annotations

import json
import re

# Warnings that mean a line of the unit did not take effect as written.
IGNORED_PATTERNS = [
    (re.compile(r"Unknown key '?(?P<key>[^' ]+)'? in section \[(?P<section>[^\]]+)\]"),
     "unknown-directive"),
    (re.compile(r"Unknown section '(?P<section>[^']+)'"), "unknown-section"),
    (re.compile(r"Failed to parse (?P<what>.+?), ignoring"), "unparsable-value"),
    # systemd 257 words the same finding (an unknown syscall name, e.g. '~@privileged' inside
    # an allow list) differently from 252's "Failed to parse system call".
    (re.compile(r"System call (?P<what>\S+) is not known, ignoring"), "unparsable-value"),
    (re.compile(r"Invalid (?P<what>.+?), ignoring"), "invalid-value"),
    (re.compile(r"(?P<what>.+?) ignoring(?:\.|:)"), "ignored"),
    (re.compile(r"Special user (?P<user>\S+) configured, this is not safe"), "unsafe-user"),
]
LINE_RE = re.compile(r"^(?P<file>/[^:]+):(?P<line>\d+): (?P<message>.*)$")
OVERALL_RE = re.compile(
    r"Overall exposure level for (?P<unit>\S+): (?P<score>\d+\.\d+) (?P<band>\w+)")


def parse_verify(stderr: str, files: list[str] | None = None) -> list[dict]:
    """Every warning about the given unit files (all files when None), classified."""
    findings = []
    for raw in stderr.splitlines():
        match = LINE_RE.match(raw.strip())
        if not match:
            continue
        if files is not None and match["file"] not in files:
            continue
        message = match["message"]
        kind = "warning"
        for pattern, name in IGNORED_PATTERNS:
            if pattern.search(message):
                kind = name
                break
        findings.append({"file": match["file"], "line": int(match["line"]), "kind": kind,
                         "message": message})
    return findings


def parse_security(text: str, json_text: str) -> dict:
    """Overall exposure (0-10 as systemd shows it) and the checks that failed."""
    overall = OVERALL_RE.search(text)
    if not overall:
        raise ValueError("no 'Overall exposure level' line in systemd-analyze security output")
    checks = json.loads(json_text)
    failing = [{"name": c["name"], "description": c["description"],
                "exposure": float(c["exposure"])}
               for c in checks if c.get("set") is False and c.get("exposure") not in (None, "")]
    failing.sort(key=lambda c: -c["exposure"])
    return {"exposure": float(overall["score"]), "band": overall["band"], "failing": failing}


# Directives whose values are capability names. systemd (252 and 257) drops a name it does not
# know without any warning, so a misspelled capability is checked here, not by verify.
CAPABILITY_DIRECTIVES = ("CapabilityBoundingSet", "AmbientCapabilities")


def unknown_capabilities(text: str, path: str, known: tuple[str, ...] | list[str]) -> list[dict]:
    """Findings for capability names in a unit file that are not in known (names without CAP_)."""
    findings = []
    for number, raw in enumerate(text.splitlines(), start=1):
        key, sep, value = raw.strip().partition("=")
        if not sep or key.strip() not in CAPABILITY_DIRECTIVES:
            continue
        for word in value.strip().removeprefix("~").split():
            if word.upper().removeprefix("CAP_") not in known:
                findings.append({
                    "file": path, "line": number, "kind": "unknown-capability",
                    "message": f"{key.strip()}: unknown capability '{word}' (systemd drops it "
                               "silently). Fix: use a name from capabilities(7)"})
    return findings
