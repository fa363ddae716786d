# Copyright: (c) 2026, kernelfence contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The isolation audit: what each component must show, the checks, and the reports.

`component_policy` turns a component's rendered directives into what the kernel must show
(capabilities, NoNewPrivs, seccomp, private namespaces, uid); `component_checks` compares the
processes read from /proc and the unit's `systemd-analyze` results with it, one check per
property with the command that produced the evidence, the expected and the observed value.
`junit_xml` and `html_report` render the per-host evidence for CI and for an auditor.

Attack results (a later probe's output) are a JSON list of objects with the keys of
ATTACK_KEYS (plus an optional `host`); `validate_attacks` checks that shape.
"""

from __future__ import annotations

import errno
import html
import json
from xml.etree import ElementTree

from ansible_collections.kernelfence.isolation.plugins.module_utils.isolation_policy import (
    compare,
    normalize_policy,
)

# Directive=value that puts every process of the unit in a namespace of its own.
NAMESPACE_DIRECTIVES = {
    ("PrivateNetwork", "yes"): "net",
    ("PrivateIPC", "yes"): "ipc",
    ("PrivateUsers", "yes"): "user",
    ("ProtectHostname", "yes"): "uts",
    ("PrivateMounts", "yes"): "mnt",
    ("PrivatePIDs", "yes"): "pid",
}
ATTACK_KEYS = ("component", "attempt", "expected", "observed", "errno", "passed")


def component_policy(directives: list, wrapper: bool) -> dict:
    """The isolation policy a unit's [Service] directives promise, in isolation_policy's terms.

    wrapper: the unit runs its workload through bubblewrap (systemd < 257); the workload's PID
    namespace is then checked on its own (`workload_pid_namespace`), since the wrapper's
    monitor process stays in the unit's namespace by design.
    """
    values: dict[str, list[str]] = {}
    for key, value in directives:
        values.setdefault(key, []).append(str(value))
    bounding = " ".join(values.get("CapabilityBoundingSet", [""])).split()
    ambient = " ".join(values.get("AmbientCapabilities", [""])).split()
    private = sorted({ns for (key, value), ns in NAMESPACE_DIRECTIVES.items()
                      if value in values.get(key, [])})
    user = (values.get("User") or ["root"])[-1]
    policy = {
        "capabilities": {"effective": bounding, "permitted": bounding, "bounding": bounding,
                         "ambient": ambient, "inheritable": bounding},
        "no_new_privs": values.get("NoNewPrivileges", ["no"])[-1] == "yes",
        "seccomp": "SystemCallFilter" in values,
        "private_namespaces": private,
        "forbidden_uids": [] if user in ("root", "0") else [0],
    }
    return {"policy": normalize_policy(policy), "workload_pid_namespace": wrapper}


def _union(processes: list[dict], getter) -> list:
    seen: list = []
    for process in processes:
        for record in [process, *process.get("threads", [])]:
            value = getter(record)
            for item in value if isinstance(value, list) else [value]:
                if item not in seen:
                    seen.append(item)
    return seen


def component_checks(component: dict, unit: dict, scan: dict, promised: dict) -> list[dict]:
    """One check per property of a component.

    component: {name, unit, threshold}; unit: {active, fragment, ignored, exposure, band,
    failing}; scan: ProcReader.scan() of the unit's processes; promised: component_policy().
    """
    name, unit_name = component["name"], component["unit"]
    processes = scan["processes"]
    policy = promised["policy"]
    violations = compare(processes, policy) if processes else []

    def check(prop: str, command: str, expected, observed, passed: bool) -> dict:
        return {"component": name, "unit": unit_name, "property": prop, "command": command,
                "expected": expected, "observed": observed, "passed": bool(passed)}

    def failed(field: str) -> list[dict]:
        return [v for v in violations if v["field"] == field or v["field"].startswith(field + ".")]

    proc = f"/proc/PID/status of every thread of {unit_name}"
    checks = [
        check("active", f"systemctl show --property=ActiveState {unit_name}", "active",
              unit["active"], unit["active"] == "active"),
        check("processes", f"cat $(cgroup of {unit_name})/cgroup.procs", ">= 1 process",
              [p["pid"] for p in processes], bool(processes)),
        check("unit parsed", f"systemd-analyze verify {unit.get('fragment') or unit_name}",
              "no ignored or unknown line",
              [f"{f['file']}:{f['line']}: {f['message']}" for f in unit["ignored"]],
              not unit["ignored"]),
        check("exposure", f"systemd-analyze security --json=short {unit_name}",
              f"<= {component['threshold']}", unit.get("exposure"),
              unit.get("exposure") is not None and unit["exposure"] <= component["threshold"]),
        check("uids", proc, "no uid 0" if policy["forbidden_uids"] else "any",
              _union(processes, lambda r: r["uids"] and r["uids"]["effective"]),
              processes and not failed("uids")),
    ]
    for cap_set in ("effective", "permitted", "ambient", "bounding"):
        checks.append(check(
            f"caps {cap_set}", proc, policy["capabilities"][cap_set],
            sorted(_union(processes, lambda r, s=cap_set: r["capabilities"][s] or [])),
            processes and not failed(f"capabilities.{cap_set}")))
    checks += [
        check("NoNewPrivs", proc, policy["no_new_privs"],
              _union(processes, lambda r: r["no_new_privs"]),
              processes and not failed("no_new_privs")),
        check("seccomp", proc, "filter" if policy["seccomp"] else "any",
              _union(processes, lambda r: f"{r['seccomp']['mode']}/{r['seccomp']['filters']}"),
              processes and not failed("seccomp")),
    ]
    for ns in policy["private_namespaces"]:
        checks.append(check(
            f"ns {ns}", f"readlink /proc/PID/ns/{ns} (vs PID 1)", "private",
            _union(processes, lambda r, n=ns: r["namespaces"][n] if "namespaces" in r else []),
            processes and not failed(f"namespaces.{ns}")))
    if promised["workload_pid_namespace"]:
        private_pid = [p["pid"] for p in processes
                       if "pid" not in p["namespaces_shared_with_init"]]
        checks.append(check("ns pid (workload)", "readlink /proc/PID/ns/pid (vs PID 1)",
                            "workload in a private PID namespace", private_pid,
                            bool(private_pid)))
    checks += [
        check("threads uniform", proc, [],
              _union(processes, lambda r: r.get("threads_differ", [])),
              processes and not any(p["threads_differ"] for p in processes)),
        check("file caps", "getfattr -n security.capability /proc/PID/exe", None,
              [p["exe"]["file_capabilities"] for p in processes
               if p["exe"] and p["exe"]["file_capabilities"]],
              processes and not any(p["exe"] and p["exe"]["file_capabilities"]
                                    for p in processes)),
    ]
    return checks


def validate_attacks(attacks: object) -> list[dict]:
    """The attack results, checked: a list of objects with ATTACK_KEYS (errno may be null)."""
    if not isinstance(attacks, list):
        raise ValueError("attack results must be a JSON list of "
                         f"{{{', '.join(ATTACK_KEYS)}}} objects")
    for index, item in enumerate(attacks):
        if not isinstance(item, dict):
            raise ValueError(f"attack results[{index}] is not an object")
        missing = [k for k in ATTACK_KEYS if k not in item]
        if missing:
            raise ValueError(f"attack results[{index}] lacks {', '.join(missing)}. Fix: give "
                             f"every entry {', '.join(ATTACK_KEYS)}")
        if not isinstance(item["passed"], bool):
            raise ValueError(f"attack results[{index}].passed must be true or false")
    return attacks


def junit_xml(evidence: dict) -> str:
    """JUnit XML of one host's evidence: a testsuite per component, a testcase per check."""
    suites = ElementTree.Element("testsuites", name=f"kernelfence isolation audit "
                                                    f"{evidence['host']}")
    by_component: dict[str, list[dict]] = {}
    for item in evidence["checks"]:
        by_component.setdefault(item["component"], []).append(item)
    for attack in evidence.get("attacks", []):
        by_component.setdefault(attack["component"], []).append(
            {"component": attack["component"], "property": f"attack: {attack['attempt']}",
             "command": attack["attempt"], "expected": attack["expected"],
             "observed": attack["observed"], "passed": attack["passed"]})
    total = failures = 0
    for component, checks in by_component.items():
        failed = sum(1 for c in checks if not c["passed"])
        suite = ElementTree.SubElement(
            suites, "testsuite", name=f"{evidence['host']}.{component}",
            tests=str(len(checks)), failures=str(failed), errors="0", skipped="0")
        for item in checks:
            case = ElementTree.SubElement(suite, "testcase", name=item["property"],
                                          classname=f"{evidence['host']}.{component}")
            if not item["passed"]:
                failure = ElementTree.SubElement(
                    case, "failure", message=f"expected {_short(item['expected'])}, "
                                             f"observed {_short(item['observed'])}")
                failure.text = f"command: {item['command']}"
            out = ElementTree.SubElement(case, "system-out")
            out.text = json.dumps({k: item[k] for k in ("command", "expected", "observed")})
        total += len(checks)
        failures += failed
    suites.set("tests", str(total))
    suites.set("failures", str(failures))
    return ('<?xml version="1.0" encoding="UTF-8"?>\n'
            + ElementTree.tostring(suites, encoding="unicode") + "\n")


def _short(value: object, limit: int = 160) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= limit else text[:limit - 1] + "…"


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#1b1f24}
h1{font-size:22px;margin:0 0 4px} h2{font-size:17px;margin:28px 0 8px}
.meta{color:#57606a;font-size:13px;margin-bottom:12px}
table{border-collapse:collapse;font-size:12px;margin-bottom:8px}
th,td{border:1px solid #d0d7de;padding:4px 7px;text-align:center}
th{background:#f6f8fa;font-weight:600} td.name{text-align:left;font-weight:600}
th.prop{white-space:normal;max-width:70px;font-size:11px;line-height:1.2}
td.pass,td.fail,td.na{min-width:26px}
td.pass{background:#2da44e;color:#fff} td.fail{background:#cf222e;color:#fff}
td.na{background:#eaeef2;color:#57606a}
.summary{font-size:14px;margin:8px 0} .bad{color:#cf222e;font-weight:600}
.good{color:#1a7f37;font-weight:600} code{font-size:11px}
details{margin:4px 0 12px} pre{background:#f6f8fa;padding:8px;font-size:11px;overflow:auto}
"""


def _errno(value: object) -> str:
    if value is None:
        return "none"
    if isinstance(value, int) and value in errno.errorcode:
        return f"{errno.errorcode[value]} ({value})"
    return str(value)


def _cell(check: dict | None) -> str:
    if check is None:
        return '<td class="na">&ndash;</td>'
    css = "pass" if check["passed"] else "fail"
    title = html.escape(f"{check['command']}\nexpected: {_short(check['expected'], 400)}\n"
                        f"observed: {_short(check['observed'], 400)}", quote=True)
    return f'<td class="{css}" title="{title}">{"✔" if check["passed"] else "✘"}</td>'


def html_report(evidences: list[dict], attacks: list[dict] | None = None) -> str:
    """One self-contained HTML page for every host: the matrix, exposure, attacks, details."""
    attacks = attacks if attacks is not None else [
        dict(a, host=e["host"]) for e in evidences for a in e.get("attacks", [])]
    properties: list[str] = []
    for evidence in evidences:
        for item in evidence["checks"]:
            if item["property"] not in properties:
                properties.append(item["property"])
    total = sum(len(e["checks"]) for e in evidences)
    failed = sum(1 for e in evidences for c in e["checks"] if not c["passed"])
    parts = ["<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">",
             "<title>kernelfence isolation audit</title>", f"<style>{CSS}</style></head><body>",
             "<h1>kernelfence isolation audit</h1>",
             f'<div class="meta">{len(evidences)} host(s); evidence read from the kernel '
             "(/proc) and systemd on each host.</div>",
             f'<div class="summary">{total} checks, '
             + (f'<span class="bad">{failed} failed</span>' if failed
                else '<span class="good">all passed</span>') + "</div>",
             "<h2>Components &times; properties</h2>",
             "<table><tr><th>host</th><th>component</th>"
             + "".join(f'<th class="prop">{html.escape(p)}</th>' for p in properties) + "</tr>"]
    for evidence in evidences:
        by_component: dict[str, dict[str, dict]] = {}
        for item in evidence["checks"]:
            by_component.setdefault(item["component"], {})[item["property"]] = item
        for component, checks in by_component.items():
            parts.append(f'<tr><td class="name">{html.escape(evidence["host"])}</td>'
                         f'<td class="name">{html.escape(component)}</td>'
                         + "".join(_cell(checks.get(p)) for p in properties) + "</tr>")
    parts.append("</table>")
    parts.append("<h2>Exposure (systemd-analyze security)</h2><table><tr><th>host</th>"
                 "<th>component</th><th>unit</th><th>exposure</th><th>band</th>"
                 "<th>threshold</th><th>heaviest failing checks</th></tr>")
    for evidence in evidences:
        for comp in evidence["components"]:
            ok = comp.get("exposure") is not None and comp["exposure"] <= comp["threshold"]
            worst = ", ".join(f"{c['name']} ({c['exposure']})"
                              for c in (comp.get("failing") or [])[:4])
            parts.append(
                f'<tr><td class="name">{html.escape(evidence["host"])}</td>'
                f'<td class="name">{html.escape(comp["name"])}</td>'
                f"<td>{html.escape(comp['unit'])}</td>"
                f'<td class="{"pass" if ok else "fail"}">{comp.get("exposure")}</td>'
                f"<td>{html.escape(str(comp.get('band')))}</td><td>{comp['threshold']}</td>"
                f'<td style="text-align:left">{html.escape(worst)}</td></tr>')
    parts.append("</table>")
    parts.append("<h2>Attack matrix</h2>")
    if attacks:
        # The probe's baseline: the same attempt as the same user without the confinement.
        with_baseline = any("baseline" in a for a in attacks)
        parts.append("<table><tr><th>host</th><th>component</th><th>attempt</th>"
                     "<th>expected</th><th>observed</th><th>errno</th><th>result</th>"
                     + ("<th>without confinement</th>" if with_baseline else "") + "</tr>")
        for attack in attacks:
            css = "pass" if attack["passed"] else "fail"
            parts.append(
                f'<tr><td class="name">{html.escape(str(attack.get("host", "")))}</td>'
                f'<td class="name">{html.escape(str(attack["component"]))}</td>'
                f'<td style="text-align:left">{html.escape(str(attack["attempt"]))}</td>'
                f"<td>{html.escape(str(attack['expected']))}</td>"
                f"<td>{html.escape(str(attack['observed']))}</td>"
                f"<td>{html.escape(_errno(attack['errno']))}</td>"
                f'<td class="{css}">{"blocked" if attack["passed"] else "NOT blocked"}</td>'
                + (f"<td>{html.escape(str(attack.get('baseline', '')))}</td>"
                   if with_baseline else "") + "</tr>")
        parts.append("</table>")
    else:
        parts.append('<div class="meta">No attack results yet. An attack probe feeds this '
                     "table with a JSON list of {" + ", ".join(ATTACK_KEYS) + "} objects "
                     "(<code>kernelfence_audit_attacks_file</code>).</div>")
    parts.append("<h2>Hosts</h2>")
    for evidence in evidences:
        versions = "; ".join(f"{k}: {'not installed' if v is None else v}"
                             for k, v in evidence["versions"].items())
        parts.append(f"<details><summary><b>{html.escape(evidence['host'])}</b>: "
                     f"{html.escape(versions)}</summary><pre>"
                     + html.escape(json.dumps(evidence["checks"], indent=1)) + "</pre></details>")
    parts.append("</body></html>\n")
    return "\n".join(parts)
