# Copyright: (c) 2026, kernelfence contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The component model: one list of components drives identity, unit, seccomp, network policy,
credentials and artifact. This module checks the cross-field rules that an argument spec cannot
express and derives each component's full record (paths, identity) from the few fields a user sets.
"""

from __future__ import annotations

import difflib
import ipaddress
import posixpath
import re
import shlex

from ansible_collections.kernelfence.isolation.plugins.module_utils.artifact_verify import (
    identity_regexp_problem,
)
from ansible_collections.kernelfence.isolation.plugins.module_utils.hardening import (
    MAX_SOCKETS,
    NATIVE_PID_NAMESPACE,
)
from ansible_collections.kernelfence.isolation.plugins.module_utils.resource_limits import (
    FIELDS as RESOURCE_FIELDS,
)
from ansible_collections.kernelfence.isolation.plugins.module_utils.resource_limits import (
    REFUSED_DIRECTIVES,
    ResourceError,
    normalize_resources,
)

PROFILES = ("orchestrator", "executor", "model_backend", "custom")

# Linux capabilities known to the kernels we target (6.1 and 6.12), without the CAP_ prefix.
CAPABILITIES = (
    "CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID",
    "SETPCAP", "LINUX_IMMUTABLE", "NET_BIND_SERVICE", "NET_BROADCAST", "NET_ADMIN", "NET_RAW",
    "IPC_LOCK", "IPC_OWNER", "SYS_MODULE", "SYS_RAWIO", "SYS_CHROOT", "SYS_PTRACE", "SYS_PACCT",
    "SYS_ADMIN", "SYS_BOOT", "SYS_NICE", "SYS_RESOURCE", "SYS_TIME", "SYS_TTY_CONFIG", "MKNOD",
    "LEASE", "AUDIT_WRITE", "AUDIT_CONTROL", "SETFCAP", "MAC_OVERRIDE", "MAC_ADMIN", "SYSLOG",
    "WAKE_ALARM", "BLOCK_SUSPEND", "AUDIT_READ", "PERFMON", "BPF", "CHECKPOINT_RESTORE",
)

NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,30}$")
USER_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
CREDENTIAL_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
UNIT_RE = re.compile(r"^[A-Za-z0-9:_.@-]{1,240}[.]service$")
DIRECTIVE_RE = re.compile(r"^[A-Z][A-Za-z0-9]{1,63}$")
# Directives the pipeline renders itself: a component changes them through its model fields,
# never as a raw directive (which would silently override the profile).
MANAGED_DIRECTIVES = {
    "User": "user", "Group": "group", "SupplementaryGroups": "sockets[].allow",
    "ExecStart": "command", "Type": "unit", "Restart": "unit", "RestartSec": "unit",
    "NoNewPrivileges": None, "CapabilityBoundingSet": "capabilities",
    "AmbientCapabilities": "ambient_capabilities", "ProtectSystem": None, "ProtectHome": None,
    "PrivateTmp": None, "PrivateDevices": None, "DevicePolicy": None, "PrivateIPC": None,
    "PrivateMounts": None, "PrivateUsers": None, "ProtectProc": None, "ProcSubset": None,
    "ProtectKernelTunables": None, "ProtectKernelModules": None, "ProtectKernelLogs": None,
    "ProtectClock": None, "ProtectControlGroups": None, "ProtectHostname": None,
    "RestrictNamespaces": None, "RestrictSUIDSGID": None, "RestrictRealtime": None,
    "LockPersonality": None, "MemoryDenyWriteExecute": None, "SystemCallArchitectures": None,
    "KeyringMode": None, "RemoveIPC": None, "UMask": None, "PrivatePIDs": None,
    "PrivateNetwork": "network", "RestrictAddressFamilies": "network",
    "IPAddressDeny": "network", "IPAddressAllow": "network.egress",
    "SystemCallFilter": "syscalls", "SystemCallErrorNumber": "syscalls",
    "ReadWritePaths": "state_paths", "ReadOnlyPaths": "readonly_paths",
    "LoadCredential": "credentials", "LoadCredentialEncrypted": "credentials",
}

DEFAULT_ROOTS = {
    "state": "/var/lib/kernelfence",
    "config": "/etc/kernelfence",
    "log": "/var/log/kernelfence",
    "runtime": "/run/kernelfence",
    "bin": "/opt/kernelfence/bin",
}
# Writable paths a component may ask for beyond its own state directory.
DEFAULT_WRITABLE_ROOTS = ("/var/lib/kernelfence/", "/srv/kernelfence/", "/var/log/kernelfence/",
                          "/run/kernelfence/")


PROTOCOLS = ("tcp", "udp")
LOOPBACK_V4 = ipaddress.ip_network("127.0.0.0/8")
LOOPBACK_V6 = ipaddress.ip_network("::1/128")
ARTIFACT_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}$")
VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}$")
SHA256_RE = re.compile(r"^(sha256:)?[0-9a-f]{64}$")
ARTIFACT_FIELDS = ("name", "src", "version", "sha256", "key", "signature", "bundle",
                   "certificate_identity", "certificate_identity_regexp",
                   "certificate_oidc_issuer", "trusted_root", "sbom")
KEYLESS_FIELDS = ("certificate_identity", "certificate_identity_regexp",
                  "certificate_oidc_issuer", "trusted_root")

# The fields a user may set, level by level (roles/component_model/meta/argument_specs.yml
# documents each; tests/unit/test_component_model.py keeps the two in step). A nested mapping
# is a sub-schema; "[]" marks a list of such entries; `directives` is free-form.
FIELDS: dict = {
    "name": None, "profile": None, "command": None, "unit": None, "directives": None,
    "user": None, "group": None, "state_paths": None, "readonly_paths": None,
    "credentials[]": {"name": None, "src": None, "encrypted": None},
    "sockets[]": {"name": None, "allow": None},
    "capabilities": None, "ambient_capabilities": None,
    "syscalls": {"allow": None, "deny": None},
    "network": {"egress[]": {"host": None, "port": None, "proto": None},
                "ingress[]": {"port": None, "proto": None, "from": None}},
    "artifacts[]": {**{f: None for f in ARTIFACT_FIELDS if f != "sbom"},
                    "sbom": {"src": None, "signature": None, "bundle": None}},
    "resources": {f: None for f in RESOURCE_FIELDS},
}
# ExecStart= prefixes (systemd.service(5), "Command lines"), all refused in `command`.
EXEC_PREFIXES = {
    "-": "'-' ignores the command's failure, so a crashing component would look healthy",
    "@": "'@' passes a different argv[0], which the bubblewrap wrapper cannot carry",
    ":": "':' turns off variable expansion, which the wrapper line cannot carry",
    "+": "'+' runs the command with full privileges, outside the sandbox",
    "!": "'!' runs the command with elevated privileges, outside the user sandbox",
}


class ModelError(ValueError):
    """A component model error whose text names the component, the field and the fix."""


def _fail(component: str, field: str, problem: str, fix: str) -> None:
    raise ModelError(f"kernelfence_components[{component}].{field}: {problem}. Fix: {fix}")


def component_label(index: int, raw: object) -> str:
    """`kernelfence_components[1] (executor)`: the position, and the name when there is one."""
    name = raw.get("name") if isinstance(raw, dict) else None
    return f"kernelfence_components[{index}]" + (f" ({name})" if isinstance(name, str) else "")


def _unknown_fields(where: str, raw: object, schema: dict) -> None:
    """Refuse a field the model does not have, at any depth, in a message of a few lines:
    where it is (component index and name, then the path), the closest known field, the list."""
    if not isinstance(raw, dict):
        return
    known = {key.removesuffix("[]"): key for key in schema}
    for key in raw:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ModelError(f"{where}: unknown field {key!r}. Fix: {hint}the fields here are "
                             f"{', '.join(sorted(known))}")
    for key, spec_key in known.items():
        sub = schema[spec_key]
        value = raw.get(key)
        if sub is None or value is None:
            continue
        if spec_key.endswith("[]"):
            for i, entry in enumerate(value if isinstance(value, list) else []):
                label = entry.get("name") if isinstance(entry, dict) else None
                _unknown_fields(f"{where}.{key}[{label if isinstance(label, str) else i}]",
                                entry, sub)
        else:
            _unknown_fields(f"{where}.{key}", value, sub)


def _list(component: str, field: str, value: object) -> list:
    """A list field as given ([] when unset); a single value is refused rather than iterated
    (a string would be read character by character)."""
    if value is None:
        return []
    if not isinstance(value, list):
        _fail(component, field, f"{value!r:.60} is not a list", f"write it as [{value!r:.40}]")
    return value


def check_fields(components: object) -> None:
    """Every component is a mapping of known fields (raises ModelError naming the first one
    that is not, by index and name)."""
    if not isinstance(components, list):
        raise ModelError("kernelfence_components: must be a list of components. Fix: see "
                         "docs/component-model.md in the collection")
    for index, raw in enumerate(components):
        if not isinstance(raw, dict):
            raise ModelError(f"kernelfence_components[{index}]: {raw!r:.60} is not a mapping. "
                             "Fix: give each component as {name: ..., profile: ...}")
        _unknown_fields(component_label(index, raw), raw, FIELDS)


def check_command(component: str, command: object) -> str | None:
    """The ExecStart= command line: its first word an absolute, normalized path, no prefix."""
    if command is None:
        return None
    if not isinstance(command, str) or not command.strip():
        _fail(component, "command", f"{command!r} is not a command line",
              "give the absolute path of the program and its arguments as one string")
    if "\n" in command or "\r" in command:
        _fail(component, "command", "the command line spans several lines", "give one line")
    text = command.strip()
    if text[0] in EXEC_PREFIXES:
        _fail(component, "command", f"{text.split()[0]!r} starts with an ExecStart= prefix: "
              f"{EXEC_PREFIXES[text[0]]}", "remove the prefix; the profile decides how the "
              "command runs")
    try:
        program = shlex.split(text)[0]
    except ValueError as exc:
        _fail(component, "command", f"cannot split {text!r} into words ({exc})",
              "close the quotes")
    if not program.startswith("/"):
        _fail(component, "command", f"the program {program!r} is not an absolute path",
              f"give its full path, e.g. /usr/bin/{posixpath.basename(program) or program} "
              f"(`command -v {posixpath.basename(program) or program}` on the host)")
    norm = posixpath.normpath(program)
    if norm != program:
        _fail(component, "command", f"the program {program!r} is not a normalized path",
              f"write it as {norm!r}")
    return text


def normalize_capability(component: str, field: str, name: str) -> str:
    """Return CAP_X for 'x', 'CAP_X' or 'cap_x'; reject names the kernel does not have."""
    bare = str(name).upper().removeprefix("CAP_")
    if bare not in CAPABILITIES:
        _fail(component, field, f"unknown capability {name!r}",
              "use a name from capabilities(7), e.g. CAP_NET_BIND_SERVICE")
    return f"CAP_{bare}"


def _check_path(component: str, field: str, path: str, roots: tuple[str, ...] | None) -> str:
    if not isinstance(path, str) or not path.startswith("/"):
        _fail(component, field, f"{path!r} is not an absolute path", "give an absolute path")
    norm = posixpath.normpath(path)
    if norm != path.rstrip("/") or ".." in path.split("/"):
        _fail(component, field, f"{path!r} is not a normalized path",
              f"write it as {norm!r}")
    if roots is not None and not any((norm + "/").startswith(root) for root in roots):
        _fail(component, field, f"{path!r} is outside the allowed roots {list(roots)}",
              "move it under one of them or extend component_model_writable_roots")
    return norm


def _directive_value(component: str, key: str, value: object) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        value = " ".join(str(v) for v in value)
    text = str(value)
    if "\n" in text or "\r" in text:
        _fail(component, f"directives.{key}", "the value spans several lines",
              "give one line; a list is joined with spaces")
    return text


def _directives(component: str, raw: object) -> list[list[str]]:
    """Extra [Service] directives, in the order given, as [key, value] pairs."""
    if not isinstance(raw, dict):
        _fail(component, "directives", "must be a mapping of directive to value",
              "write e.g. {MemoryMax: 2G, TasksMax: 64}")
    out = []
    for key, value in raw.items():
        if not isinstance(key, str) or not DIRECTIVE_RE.match(key):
            _fail(component, "directives", f"{key!r} is not a systemd directive name",
                  "use the CamelCase name from systemd.exec(5) or systemd.resource-control(5)")
        if key in REFUSED_DIRECTIVES:
            field = REFUSED_DIRECTIVES[key]
            fix = (f"use {field} (the component's resources; see the role README)" if field
                   else "it is part of every profile's strict base; choose the profile instead")
            _fail(component, f"directives.{key}", "is a resource limit the model sets", fix)
        if key in MANAGED_DIRECTIVES:
            field = MANAGED_DIRECTIVES[key]
            fix = (f"use the model field `{field}`" if field
                   else "it is part of every profile's strict base; choose the profile instead")
            _fail(component, f"directives.{key}", "is set by the component's profile", fix)
        out.append([key, _directive_value(component, key, value)])
    return out


def _port(component: str, field: str, value: object) -> int:
    # bool is an int in Python: True would silently become port 1.
    if isinstance(value, bool) or not isinstance(value, (int, str)) or not str(value).isdigit():
        _fail(component, field, f"{value!r} is not a port number",
              "give an integer from 1 to 65535")
    port = int(value)
    if not 1 <= port <= 65535:
        _fail(component, field, f"port {port} is out of range", "give an integer from 1 to 65535")
    return port


def _proto(component: str, field: str, value: object) -> str:
    proto = "tcp" if value is None else value
    if proto not in PROTOCOLS:
        _fail(component, field, f"unknown protocol {value!r}", "use tcp or udp")
    return str(proto)


def _egress(component: str, endpoints: object) -> list[dict]:
    """Egress endpoints with a literal IP address (never a name: nft would resolve it once, at
    load time, and the rule would silently go stale), a port in range and a known protocol."""
    if not isinstance(endpoints, list):
        _fail(component, "network.egress", "must be a list of {host, port, proto}",
              "write e.g. [{host: 127.0.0.1, port: 8088}]")
    out = []
    for i, ep in enumerate(endpoints):
        field = f"network.egress[{i}]"
        if not isinstance(ep, dict):
            _fail(component, field, f"{ep!r} is not a mapping", "write {host: ADDRESS, port: N}")
        try:
            addr = ipaddress.ip_address(str(ep.get("host", "")).strip())
        except ValueError:
            _fail(component, f"{field}.host", f"{ep.get('host')!r} is not an IPv4 or IPv6 address",
                  "give a literal address such as 127.0.0.1 or ::1 (no names, no prefixes)")
        out.append({"host": addr.compressed, "port": _port(component, f"{field}.port",
                                                           ep.get("port")),
                    "proto": _proto(component, f"{field}.proto", ep.get("proto")),
                    "family": "ip" if addr.version == 4 else "ip6"})
    return out


def _ingress(component: str, entries: object) -> list[dict]:
    if not isinstance(entries, list):
        _fail(component, "network.ingress", "must be a list of {port, proto, from}",
              "write e.g. [{port: 9000, from: [orchestrator]}]")
    out = []
    for i, entry in enumerate(entries):
        field = f"network.ingress[{i}]"
        if not isinstance(entry, dict):
            _fail(component, field, f"{entry!r} is not a mapping", "write {port: N, from: [NAME]}")
        peers = entry.get("from") or []
        if not isinstance(peers, list) or not peers:
            _fail(component, f"{field}.from", "names no component",
                  "list the components that may connect")
        out.append({"port": _port(component, f"{field}.port", entry.get("port")),
                    "proto": _proto(component, f"{field}.proto", entry.get("proto")),
                    "from": [str(p) for p in peers]})
    return out


def _network_model(component: str, raw: object) -> dict:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        _fail(component, "network", f"{raw!r} is not a mapping", "write {egress: [...]}")
    unknown = sorted(set(raw) - {"egress", "ingress"})
    if unknown:
        _fail(component, "network", f"unknown field(s) {unknown}", "use egress and ingress")
    return {"egress": _egress(component, raw.get("egress") or []),
            "ingress": _ingress(component, raw.get("ingress") or [])}


def is_loopback(host: str) -> bool:
    addr = ipaddress.ip_address(host)
    return addr in (LOOPBACK_V4 if addr.version == 4 else LOOPBACK_V6)


def _check_loopback_peers(records: list[dict]) -> None:
    """Loopback between components only where the model allows it: a component's ingress
    names its clients, and each client lists the port among its own egress endpoints (the
    unit's IPAddressAllow= comes from egress); no other component may list that port."""
    names = {rec["name"] for rec in records}
    by_name = {rec["name"]: rec for rec in records}
    served: dict[tuple[str, int], tuple[str, list[str]]] = {}
    for rec in records:
        for i, entry in enumerate(rec["network"]["ingress"]):
            field = f"network.ingress[{i}].from"
            if rec["profile"] == "model_backend":
                _fail(rec["name"], "network.ingress", "the model_backend profile has no network",
                      "serve it over a unix socket (sockets) or use profile custom")
            for peer in entry["from"]:
                if peer not in names:
                    _fail(rec["name"], field, f"unknown component {peer!r}",
                          f"name one of {', '.join(sorted(names - {rec['name']}))}")
                if peer == rec["name"]:
                    _fail(rec["name"], field, "a component cannot be its own client",
                          "name the components that connect to it")
                listed = any(is_loopback(ep["host"]) and ep["port"] == entry["port"]
                             and ep["proto"] == entry["proto"]
                             for ep in by_name[peer]["network"]["egress"])
                if not listed:
                    _fail(rec["name"], field, f"component {peer!r} does not list a loopback "
                          f"{entry['proto']} endpoint on port {entry['port']} in its "
                          "network.egress", f"add {{host: 127.0.0.1, port: {entry['port']}, "
                          f"proto: {entry['proto']}}} to {peer}'s network.egress")
            served[(entry["proto"], entry["port"])] = (rec["name"], entry["from"])
    for rec in records:
        for i, ep in enumerate(rec["network"]["egress"]):
            owner = served.get((ep["proto"], ep["port"]))
            if owner and is_loopback(ep["host"]) and rec["name"] not in (owner[0], *owner[1]):
                _fail(rec["name"], f"network.egress[{i}]", f"loopback port {ep['port']} is served "
                      f"by component {owner[0]!r}, which does not list {rec['name']!r} as a "
                      "client", f"add {rec['name']} to {owner[0]}'s network.ingress from, or "
                      "remove the endpoint")


def _check_signature_source(component: str, field: str, entry: dict, keyless: bool) -> None:
    if keyless:
        if not entry.get("bundle"):
            _fail(component, f"{field}.bundle", "a keyless artifact needs a Sigstore bundle",
                  "give the bundle path (cosign sign-blob --bundle FILE)")
        if entry.get("signature"):
            _fail(component, f"{field}.signature", "a keyless artifact is verified from its "
                  "bundle alone", "drop signature and give the bundle")
    elif not entry.get("signature") and not entry.get("bundle"):
        _fail(component, field, "no signature and no bundle",
              "give signature (cosign sign-blob --output-signature) or bundle")
    elif entry.get("signature") and entry.get("bundle"):
        _fail(component, field, "both signature and bundle are given",
              "give one of them")


def normalize_artifacts(component: str, raw: list | None, bin_root: str) -> list[dict]:
    """Check the signed artifacts of a component and derive where each one is installed."""
    out: list[dict] = []
    for index, entry in enumerate(raw or []):
        if not isinstance(entry, dict):
            _fail(component, f"artifacts[{index}]", "is not a mapping",
                  "give name, src and the signature fields")
        name = entry.get("name")
        if not isinstance(name, str) or not ARTIFACT_NAME_RE.match(name):
            _fail(component, f"artifacts[{index}].name", f"{name!r} is not a file name",
                  "use letters, digits, '_', '.', '+' or '-'")
        field = f"artifacts[{name}]"
        unknown = sorted(set(entry) - set(ARTIFACT_FIELDS))
        if unknown:
            _fail(component, field, f"unknown field(s) {', '.join(unknown)}",
                  f"use only {', '.join(ARTIFACT_FIELDS)}")
        if any(a["name"] == name for a in out):
            _fail(component, field, "two artifacts share this name", "rename one of them")
        if not entry.get("src"):
            _fail(component, f"{field}.src", "missing",
                  "give the artifact's path on the controller")
        version = entry.get("version")
        if version is not None and not VERSION_RE.match(str(version)):
            _fail(component, f"{field}.version", f"{version!r} is not a version string",
                  "use letters, digits, '_', '.', '+' or '-'")
        pin = entry.get("sha256")
        if pin is not None and not SHA256_RE.match(str(pin)):
            _fail(component, f"{field}.sha256", f"{pin!r} is not a sha256 digest",
                  "give 64 lower-case hex digits (sha256sum FILE)")
        keyless = not entry.get("key")
        if entry.get("key") and any(entry.get(k) for k in KEYLESS_FIELDS):
            _fail(component, field, "both key and keyless fields "
                  f"({', '.join(k for k in KEYLESS_FIELDS if entry.get(k))}) are given",
                  "verify with a key or with a certificate identity, not both")
        if keyless:
            if not any(entry.get(k) for k in KEYLESS_FIELDS):
                _fail(component, field, "no key and no certificate identity",
                      "give key (a cosign public key) or certificate_identity, "
                      "certificate_oidc_issuer and trusted_root")
            if entry.get("certificate_identity") and entry.get("certificate_identity_regexp"):
                _fail(component, field, "both certificate_identity and "
                      "certificate_identity_regexp are given", "give one of them")
            if not (entry.get("certificate_identity") or entry.get("certificate_identity_regexp")):
                _fail(component, f"{field}.certificate_identity", "missing",
                      "give the signer identity (or certificate_identity_regexp)")
            if entry.get("certificate_identity_regexp") is not None:
                # The verifier's own rule (artifact_verify): empty, invalid, or matching an
                # empty identity (so every signer of the trusted root) is refused here already.
                problem = identity_regexp_problem(str(entry["certificate_identity_regexp"]))
                if problem:
                    what, _sep, fix = problem.rpartition("; ")
                    _fail(component, f"{field}.certificate_identity_regexp", what, fix)
            for required in ("certificate_oidc_issuer", "trusted_root"):
                if not entry.get(required):
                    _fail(component, f"{field}.{required}", "missing for keyless verification",
                          "give the OIDC issuer URL and the trusted_root.json path")
        _check_signature_source(component, field, entry, keyless)
        sbom = entry.get("sbom")
        if sbom is not None:
            if not isinstance(sbom, dict) or not sbom.get("src"):
                _fail(component, f"{field}.sbom", "needs src (the vendor's CycloneDX JSON)",
                      "give sbom: {src: ..., signature: ...} or drop it")
            _check_signature_source(component, f"{field}.sbom", sbom, keyless)
        base = f"{bin_root}/{component}/{name}"
        record = {k: entry.get(k) for k in ARTIFACT_FIELDS if k != "sbom"}
        record.update({"component": component, "version": None if version is None else
                       str(version), "sbom": dict(sbom) if sbom else None,
                       "base_dir": base, "path": f"{base}/current/{name}"})
        out.append(record)
    return out


def normalize_component(raw: dict, roots: dict[str, str],
                        writable_roots: tuple[str, ...]) -> dict:
    """Derive the full record of one component from the fields the user set."""
    name = raw.get("name")
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise ModelError(f"kernelfence_components: component name {name!r} is invalid. Fix: use "
                         "lower case letters, digits and '_', starting with a letter")
    profile = raw.get("profile")
    if profile not in PROFILES:
        _fail(name, "profile", f"unknown profile {profile!r}",
              f"use one of {', '.join(PROFILES)}")
    user = raw.get("user") or f"kf-{name.replace('_', '-')}"
    group = raw.get("group") or user
    for field, value in (("user", user), ("group", group)):
        if not USER_RE.match(value) or value == "root":
            _fail(name, field, f"{value!r} is not a valid dedicated account name",
                  "use a lower-case name of at most 32 characters that is not root")
    state_dir = f"{roots['state']}/{name}"
    state_paths = [_check_path(name, "state_paths", p, writable_roots)
                   for p in _list(name, "state_paths", raw.get("state_paths"))]
    readonly_paths = [_check_path(name, "readonly_paths", p, None)
                      for p in _list(name, "readonly_paths", raw.get("readonly_paths"))]
    caps = [normalize_capability(name, "capabilities", c)
            for c in _list(name, "capabilities", raw.get("capabilities"))]
    credentials = []
    for cred in _list(name, "credentials", raw.get("credentials")):
        cred_name = cred.get("name", "")
        if not CREDENTIAL_RE.match(cred_name):
            _fail(name, "credentials.name", f"{cred_name!r} is not a valid credential name",
                  "use letters, digits, '_', '.' or '-'")
        credentials.append({"name": cred_name, "src": cred.get("src"),
                            "encrypted": bool(cred.get("encrypted", False))})
    unit = raw.get("unit")
    if unit is not None:
        if not isinstance(unit, str) or not UNIT_RE.match(unit) or unit.startswith("kf-"):
            _fail(name, "unit", f"{unit!r} is not the name of a service unit of yours",
                  "name an existing unit such as 'agent-tools.service' (kf-* units are ours)")
        if raw.get("sockets"):
            _fail(name, "sockets", "sockets are served by kernelfence's own units only",
                  "remove `unit` to let kernelfence write the service, or declare the sockets "
                  "in your own unit")
    try:
        resources = normalize_resources(profile, raw.get("resources"))
    except ResourceError as exc:
        _fail(name, f"resources.{exc.field}".rstrip("."), exc.problem, exc.fix)
    return {
        "name": name,
        "profile": profile,
        "command": check_command(name, raw.get("command")),
        "unit": unit,
        "directives": _directives(name, raw.get("directives") or {}),
        "user": user,
        "group": group,
        "state_dir": state_dir,
        "config_dir": f"{roots['config']}/{name}",
        "log_dir": f"{roots['log']}/{name}",
        "runtime_dir": f"{roots['runtime']}/{name}",
        "state_paths": state_paths,
        "readonly_paths": readonly_paths,
        "credentials": credentials,
        "sockets": list(_list(name, "sockets", raw.get("sockets"))),
        "capabilities": caps,
        "ambient_capabilities": bool(raw.get("ambient_capabilities", False)),
        "syscalls": dict(raw.get("syscalls") or {}),
        "network": _network_model(name, raw.get("network")),
        "artifacts": normalize_artifacts(name, _list(name, "artifacts", raw.get("artifacts")),
                                         roots["bin"]),
        "resources": resources,
    }


def normalize_components(components: list[dict], roots: dict[str, str] | None = None,
                         writable_roots: list[str] | None = None) -> list[dict]:
    """Validate the whole model (cross-field rules included) and return the derived records."""
    check_fields(components)
    roots = {**DEFAULT_ROOTS, **(roots or {})}
    wroots = tuple(r.rstrip("/") + "/" for r in (writable_roots or DEFAULT_WRITABLE_ROOTS))
    records = [normalize_component(raw, roots, wroots) for raw in components]
    seen: dict[str, str] = {}
    for rec in records:
        if rec["name"] in seen:
            _fail(rec["name"], "name", "two components share this name", "rename one of them")
        seen[rec["name"]] = rec["name"]
    owners: dict[str, str] = {}
    for rec in records:
        for field in ("user", "group"):
            other = owners.get(f"{field}:{rec[field]}")
            if other:
                _fail(rec["name"], field, f"{rec[field]!r} is also the {field} of component "
                      f"{other!r}", "give every component its own user and group")
            owners[f"{field}:{rec[field]}"] = rec["name"]
    _check_loopback_peers(records)
    names = set(seen)
    by_name = {rec["name"]: rec for rec in records}
    for rec in records:
        rec["client_group"] = f"{rec['group']}-clients"[:32] if rec["sockets"] else None
        rec["client_of"] = []
        rec["connects_to"] = []
    for rec in records:
        if len(rec["sockets"]) > MAX_SOCKETS:
            # Socket activation passes them as descriptors 3.. and the systemd 252 start path
            # hands the seccomp program over on descriptor 9 (hardening.SECCOMP_FD).
            _fail(rec["name"], "sockets", f"{len(rec['sockets'])} sockets, at most "
                  f"{MAX_SOCKETS} are passed to a component",
                  "serve several endpoints on one socket, or split the component")
        for sock in rec["sockets"]:
            if not CREDENTIAL_RE.match(str(sock.get("name", ""))):
                _fail(rec["name"], "sockets.name", f"{sock.get('name')!r} is not a file name",
                      "use letters, digits, '_', '.' or '-'")
            for peer in _list(rec["name"], f"sockets[{sock.get('name')}].allow",
                              sock.get("allow")):
                if peer not in names:
                    _fail(rec["name"], f"sockets[{sock.get('name')}].allow",
                          f"unknown component {peer!r}",
                          f"name one of {', '.join(sorted(names))}")
                if rec["client_group"] not in by_name[peer]["client_of"]:
                    by_name[peer]["client_of"].append(rec["client_group"])
                    by_name[peer]["connects_to"].append(rec["name"])
            sock["path"] = f"{rec['runtime_dir']}/{sock['name']}"
    return records


def directories(records: list[dict]) -> list[dict]:
    """Every directory the identity role owns, with least-privilege owner, group and mode.

    The shared roots (parents of the per-component directories) come first, root-owned 0755.
    """
    out = []
    roots = []
    for rec in records:
        for key in ("state_dir", "config_dir", "log_dir"):
            parent = posixpath.dirname(rec[key])
            if parent not in roots:
                roots.append(parent)
    out += [{"path": p, "owner": "root", "group": "root", "mode": "0755", "component": None}
            for p in roots]
    for rec in records:
        out += [
            {"path": rec["state_dir"], "owner": rec["user"], "group": rec["group"], "mode": "0700",
             "component": rec["name"]},
            {"path": rec["config_dir"], "owner": "root", "group": rec["group"], "mode": "0750",
             "component": rec["name"]},
            {"path": rec["log_dir"], "owner": rec["user"], "group": rec["group"], "mode": "0750",
             "component": rec["name"]},
        ]
        out += [{"path": p, "owner": rec["user"], "group": rec["group"], "mode": "0700",
                 "component": rec["name"]} for p in rec["state_paths"]]
    return out


def identity_requirements(records: list[dict]) -> list[str]:
    """What component_identity creates, as `component kind name` triples (flattened for a
    shell loop): users, groups (client groups too), then directories."""
    out: list[str] = []
    for rec in records:
        out += [rec["name"], "user", rec["user"], rec["name"], "group", rec["group"]]
        if rec.get("client_group"):
            out += [rec["name"], "group", rec["client_group"]]
    for entry in directories(records):
        out += [entry["component"] or "-", "directory", entry["path"]]
    return out


def missing_identities(report: str, role: str) -> str:
    """The failure for the `component kind name` lines of what does not exist on the host."""
    missing: dict[str, list[str]] = {}
    for line in report.splitlines():
        parts = line.split(" ", 2)
        if len(parts) == 3:
            missing.setdefault(parts[0], []).append(f"{parts[1]} {parts[2]}")
    where = "; ".join((f"kernelfence_components[{comp}]" if comp != "-" else "shared roots")
                      + ": " + ", ".join(items) for comp, items in missing.items())
    return (f"{role}: the component identities it needs do not exist on this host ({where}). "
            "Nothing was changed. Fix: run the kernelfence.isolation.component_identity role "
            f"first, with the same kernelfence_components (before {role} in the same play, "
            "or use playbooks/site.yml)")


def service_unit(record: dict) -> str | None:
    """The unit that runs the component: the operator's own `unit`, else kernelfence's
    kf-<name>.service when it has a command, else none (it runs no service)."""
    if record.get("unit"):
        return str(record["unit"])
    return f"kf-{record['name']}.service" if record.get("command") else None


def restart_targets(records: list[dict], changed: list[str]) -> list[str]:
    """`own:UNIT` or `ours:UNIT` for each changed component that runs a service. An `own` unit
    (the operator's, named by `unit`) must exist; an `ours` one may not exist yet on a first
    run, where component_unit installs it later in the play and starts it on the new binary."""
    out = []
    for rec in records:
        unit = service_unit(rec) if rec["name"] in changed else None
        if unit:
            out.append(f"{'own' if rec.get('unit') else 'ours'}:{unit}")
    return out


def wrapper_capability_problems(records: list[dict], systemd_version: int) -> list[str]:
    """One sentence per component granted capabilities on a systemd that lacks PrivatePIDs=:
    there the bubblewrap wrapper runs every workload with --cap-drop ALL, so the capability
    would be void (and bubblewrap refuses to start a workload with ambient capabilities)."""
    if systemd_version >= NATIVE_PID_NAMESPACE:
        return []
    return [f"kernelfence_components[{rec['name']}].capabilities: "
            f"{' '.join(rec['capabilities'])} cannot be granted on systemd {systemd_version}: "
            "the bubblewrap wrapper that gives the component its PID namespace there drops "
            "every capability (and refuses ambient ones). Fix: run the component on systemd "
            ">= 257 (Debian 13), or serve the privileged operation from a unit outside the "
            "model"
            for rec in records if rec.get("capabilities")]


def units_not_loaded(show_output: str) -> dict[str, str]:
    """{unit: LoadState} of the units `systemctl show --property=Id,LoadState U...` did not
    find loaded (blocks of Id= and LoadState= lines, separated by blank lines)."""
    out = {}
    for block in show_output.strip().split("\n\n"):
        props = dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
        if props.get("Id") and props.get("LoadState") != "loaded":
            out[props["Id"]] = props.get("LoadState") or "unknown"
    return out


def missing_named_units(records: list[dict], show_output: str) -> str:
    """The failure when a component with artifacts names (`unit`) a unit that does not exist
    on the host; '' when every named unit is loaded."""
    absent = units_not_loaded(show_output)
    named = [(rec["name"], rec["unit"]) for rec in records
             if rec.get("artifacts") and rec.get("unit") in absent]
    if not named:
        return ""
    return "; ".join(
        f"kernelfence_components[{name}].unit: {unit} does not exist on this host "
        f"(LoadState={absent[unit]}), so the restart after its new binary cannot reach it"
        for name, unit in named) + (". Nothing was changed. Fix: install that unit first, or "
                                    "remove `unit` so that kernelfence writes "
                                    "kf-<name>.service")
