# Copyright: (c) 2026, kernelfence contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Parsers for `systemd-analyze verify` and `systemd-analyze security` output.

systemd loads a unit with an unknown key or an unparsable value and only warns; `verify` still
exits 0. These parsers turn every such warning into a finding, so a unit that systemd would run
with part of its hardening silently ignored is reported as an error, never passed.
"""

from __future__ import annotations

import difflib
import json
import os
import re
from typing import NamedTuple

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


# --- Failures of `verify` that systemd does not tie to a line ---------------------------------

# "kf.service: Command /usr/bin/x is not executable: No such file or directory" and the like:
# systemd names the unit, not the file and line.
UNIT_MESSAGE_RE = re.compile(r"^(?P<unit>[^\s/:]+\.[a-z]+): (?P<message>.+)$")
NOT_EXECUTABLE_RE = re.compile(r"Command (?P<command>\S+) is not executable")
NO_EXEC_START = "has no ExecStart="
EXEC_DIRECTIVES = ("ExecStart", "ExecStartPre", "ExecStartPost", "ExecCondition", "ExecReload",
                   "ExecStop", "ExecStopPost")


def unit_load_order(path: str) -> list[str]:
    """The unit file and the drop-ins beside it (`NAME.d/*.conf`), in the order systemd loads."""
    directory = path + ".d"
    try:
        dropins = sorted(f for f in os.listdir(directory) if f.endswith(".conf"))
    except OSError:
        dropins = []
    return [path, *(os.path.join(directory, f) for f in dropins)]


def verify_errors(stderr: str, units: dict[str, list[tuple[str, str]]]) -> list[dict]:
    """Findings for the reasons `verify` failed that it reports per unit, not per line.

    units maps a unit name to its files as (path, text) in load order; the line of a missing
    executable is found in them. The closing "Unit X has a bad unit file setting." only repeats
    that a reason was given, so it is left out.
    """
    findings = []
    for raw in stderr.splitlines():
        match = UNIT_MESSAGE_RE.match(raw.strip())
        if not match or match["unit"] not in units:
            continue
        message, files = match["message"], units[match["unit"]]
        path, line = files[0][0], None
        missing = NOT_EXECUTABLE_RE.search(message)
        if missing:
            kind = "missing-executable"
            for where, number, _section, key, value in assignments(files):
                if key in EXEC_DIRECTIVES and missing["command"] in value:
                    path, line = where, number
                    break
            fix = (f"install {missing['command']} on the target before the unit, or correct "
                   "the path")
        elif NO_EXEC_START in message:
            kind, fix = "no-exec-start", "add ExecStart= (a unit needs the command it runs)"
        else:
            kind, fix = "verify-error", "correct the unit (see systemd.unit(5))"
        findings.append({"file": path, "line": line, "kind": kind,
                         "message": f"{message} Fix: {fix}"})
    return findings


# --- Reading unit files the way systemd merges them --------------------------------------------

class Assignment(NamedTuple):
    path: str
    line: int
    section: str
    key: str
    value: str


def assignments(files: list[tuple[str, str]]) -> list[Assignment]:
    """Every `Key=value` of the files (fragment first, then drop-ins), with continuations."""
    out = []
    for path, text in files:
        section, pending, start = "", "", 0
        for number, raw in enumerate(text.splitlines(), start=1):
            line = raw.strip()
            if not pending and (not line or line[0] in "#;"):
                continue
            if not pending and line.startswith("[") and line.endswith("]"):
                section = line[1:-1]
                continue
            if line.endswith("\\"):
                start = start or number
                pending += line[:-1] + " "
                continue
            line, first = pending + line, start or number
            pending, start = "", 0
            key, sep, value = line.partition("=")
            if sep:
                out.append(Assignment(path, first, section, key.strip(), value.strip()))
    return out


def effective(found: list[Assignment], key: str) -> list[Assignment]:
    """The assignments of a list-valued key still in force: those after its last empty one."""
    mine = [a for a in found if a.key == key and a.section not in ("Unit", "Install")]
    for index in range(len(mine) - 1, -1, -1):
        if mine[index].value in ("", "~"):
            return mine[index + 1:]
    return mine


def last_value(found: list[Assignment], key: str) -> Assignment | None:
    mine = [a for a in found if a.key == key and a.section not in ("Unit", "Install")]
    return mine[-1] if mine and mine[-1].value else None


# --- Directives systemd accepts but cannot enforce on the target ------------------------------

def systemd_features(version_output: str) -> dict:
    """Version and compile-time features from `systemctl --version` (run on the target)."""
    words = version_output.split()
    version = int(words[1]) if len(words) > 1 and words[0] == "systemd" and \
        words[1].isdigit() else None
    return {"version": version,
            "enabled": sorted(w[1:] for w in words if w.startswith("+")),
            "disabled": sorted(w[1:] for w in words if w.startswith("-") and w[1:].isupper())}


# BPF-LSM and cgroup-BPF programs systemd can only load when built +BPF_FRAMEWORK; a build
# without it (Debian 12) accepts the directives and does nothing. IPAddressAllow=/Deny= use the
# older cgroup attach and work either way.
BPF_DIRECTIVES = {
    "RestrictFileSystems": "restrict file access with ProtectSystem=, InaccessiblePaths= or "
                           "TemporaryFileSystem=",
    "RestrictNetworkInterfaces": "use PrivateNetwork= or nftables rules per interface",
    "SocketBindAllow": "limit binding with RestrictAddressFamilies= and an empty "
                       "CapabilityBoundingSet=, and filter the ports with nftables",
    "SocketBindDeny": "limit binding with RestrictAddressFamilies= and an empty "
                      "CapabilityBoundingSet=, and filter the ports with nftables",
}
TRUE_WORDS = ("1", "yes", "y", "true", "t", "on")
# PrivateUsers= values that put the service into its own user namespace (self: 257).
USER_NAMESPACE_WORDS = (*TRUE_WORDS, "self", "identity", "full", "managed")


def unenforced_directives(files: list[tuple[str, str]], features: dict) -> list[dict]:
    """Lines systemd loads without a word but that take no effect on the target.

    files: one unit's fragment and drop-ins, (path, text) in load order. features: from
    systemd_features() of the target's `systemctl --version`.
    """
    found = assignments(files)
    findings = []
    version = features.get("version")
    known = features.get("enabled") or features.get("disabled")
    for key, fix in BPF_DIRECTIVES.items():
        if "BPF_FRAMEWORK" in features.get("enabled", []):
            break
        for a in effective(found, key):
            why = (f"systemd {version} on the target is built without BPF_FRAMEWORK "
                   "(systemctl --version shows -BPF_FRAMEWORK)" if known else
                   "the target's systemd features are unknown (systemctl --version failed)")
            findings.append({"file": a.path, "line": a.line, "kind": "unenforced-directive",
                             "message": f"{a.key}={a.value} is accepted but not enforced: {why}."
                                        f" Fix: {fix}"})
    users = last_value(found, "PrivateUsers")
    if users and users.value.lower() in USER_NAMESPACE_WORDS:
        granted = [a for a in effective(found, "CapabilityBoundingSet")
                   if not a.value.startswith("~")]
        granted += effective(found, "AmbientCapabilities")
        for a in sorted(granted, key=lambda a: (a.path != users.path, a.path, a.line)):
            findings.append({
                "file": a.path, "line": a.line, "kind": "void-capability",
                "message": f"{a.key}={a.value} is void on the host: PrivateUsers={users.value} "
                           f"({os.path.basename(users.path)}:{users.line}) gives the service the "
                           "capability only inside its own user namespace. Fix: drop the "
                           "capability, or set PrivateUsers=no for a service that needs it on "
                           "the host"})
    return findings


# --- Why a SystemCallFilter= line was partly ignored --------------------------------------------

def explain_finding(finding: dict, files: list[tuple[str, str]]) -> dict:
    """The finding with a fix; for a '~' inside a SystemCallFilter= allow list, says which
    names systemd dropped and how to write the deny list instead."""
    out = dict(finding)
    line = next((a for a in assignments(files) if a.path == finding["file"]
                 and a.line == finding["line"]), None)
    if line and line.key == "SystemCallFilter" and finding["kind"] == "unparsable-value":
        words = line.value.split()
        inner = [w for w in words[1:] if w.startswith("~")]
        if inner and not words[0].startswith("~"):
            tail = words.index(inner[0])
            allow, deny = " ".join(words[:tail]), " ".join(words[tail:])
            out["message"] = (
                f"SystemCallFilter={line.value} is an allow list ('~' negates a whole line "
                f"only): systemd drops '{inner[0]}' and nothing of '{deny}' is denied. "
                f"Fix: two lines, SystemCallFilter={allow} then SystemCallFilter={deny}")
            return out
        if inner:
            fixed = " ".join([words[0], *(w.lstrip("~") for w in words[1:])])
            out["message"] = (
                f"SystemCallFilter={line.value}: the leading '~' already makes the whole line "
                f"a deny list; systemd drops {', '.join(repr(w) for w in inner)}. "
                f"Fix: SystemCallFilter={fixed}")
            return out
    if "Fix:" in out["message"]:
        return out
    fixes = {"unknown-directive": "remove it or target a systemd that knows it",
             "unknown-section": "rename the section (see systemd.unit(5))",
             "unsafe-user": "use a dedicated user or DynamicUser=yes"}
    fix = fixes.get(finding["kind"], "correct the value (see systemd.exec(5))")
    out["message"] = f"{out['message']} Fix: {fix}"
    return out


# --- --security-policy files --------------------------------------------------------------------

POLICY_NUMBERS = ("weight", "range")
POLICY_TEXTS = ("description_good", "description_bad", "description_na")


def check_ids(json_text: str) -> list[str]:
    """The ids a policy may name: the `json_field` of every check `--json=short` printed."""
    return sorted({c["json_field"] for c in json.loads(json_text) if c.get("json_field")})


def security_policy_problems(policy: object, path: str, known: list[str]) -> list[str]:
    """Why systemd would silently ignore part of a --security-policy file (it only logs at
    debug level): unknown check ids, unknown fields, a weight or range that is not a whole
    number >= 0, a description that is not a string."""
    if not isinstance(policy, dict):
        return [f"{path}: must hold a JSON object of check ids, e.g. "
                '{"PrivateNetwork": {"weight": 0}}']
    problems = []
    for check, item in policy.items():
        if check not in known:
            near = difflib.get_close_matches(check, known, n=1)
            hint = f"did you mean {near[0]}?" if near else "use an id from " \
                "systemd-analyze security --json=short (json_field)"
            problems.append(f"{path}: unknown check '{check}'. Fix: {hint}")
            continue
        if not isinstance(item, dict):
            problems.append(f"{path}: check '{check}' must be an object of weight, range, "
                            "description_good, description_bad, description_na")
            continue
        for field, value in item.items():
            if field in POLICY_NUMBERS:
                if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                    problems.append(f"{path}: check '{check}' field '{field}' is {value!r}, "
                                    "not a whole number >= 0. Fix: e.g. \"weight\": 1000")
            elif field in POLICY_TEXTS:
                if not isinstance(value, str):
                    problems.append(f"{path}: check '{check}' field '{field}' must be a string")
            else:
                problems.append(f"{path}: check '{check}' has unknown field '{field}'. Fix: "
                                f"use {', '.join(POLICY_NUMBERS + POLICY_TEXTS)}")
    return problems
