# Copyright: (c) 2026, kernelfence contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The isolation audit: what each component must show, the checks, and the reports.

`component_policy` turns a component's rendered directives into what the kernel must show
(capabilities, NoNewPrivs, seccomp, private namespaces, uid); `component_checks` compares the
processes read from /proc and the unit's `systemd-analyze` results with it, one check per
property with the command that produced the evidence, the expected and the observed value.
`junit_xml` and `html_report` render the per-host evidence for CI and for an auditor.

Attack results (a later probe's output) are a JSON list of objects with the keys of
ATTACK_KEYS (plus an optional `host`, `control` and `baseline`); `validate_attacks` checks that
shape. An entry with `control: true` is a control: something the component must still be able
to do (its own files, a socket of its own), which fails when the confinement denies it.

`judge` is the one place that decides whether a check, an attack attempt or a control passed;
the HTML summary, the JUnit XML and the module's failure count all take its verdict, so they
cannot disagree. An attack entry passes only when it says `passed: true` AND what was observed
is what was expected: an entry that contradicts itself is a failure, not a pass.
"""

from __future__ import annotations

import errno
import html
import json
import os
import time
from xml.etree import ElementTree

from ansible_collections.kernelfence.isolation.plugins.module_utils.isolation_policy import (
    compare,
    normalize_policy,
)
from ansible_collections.kernelfence.isolation.plugins.module_utils.live_limits import (
    LIMIT_NAMES,
)
from ansible_collections.kernelfence.isolation.plugins.module_utils.proc_isolation import (
    capability_names,
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
            sorted(_union(processes, lambda r, s=cap_set: capability_names(r, s) or [])),
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


def limit_checks(component: dict, expected: dict, processes: list[dict], cgroups: dict,
                 host: dict) -> list[dict]:
    """One check per resource limit the unit sets: the value the kernel shows (the process's
    cgroup v2 file, /proc/PID/limits, oom_score_adj, the tmpfs size in mountinfo) against the
    value the unit's directives make it show (live_limits.expected_limits)."""
    from ansible_collections.kernelfence.isolation.plugins.module_utils.live_limits import (
        compare_limits,
        limit_command,
    )

    return [{"component": component["name"], "unit": component["unit"],
             "property": result["name"], "command": limit_command(result["name"]),
             "expected": result["expected"], "observed": result["observed"],
             "directive": result["directive"], "passed": result["passed"]}
            for result in compare_limits(expected, processes, cgroups, host)]


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
        if not isinstance(item.get("control", False), bool):
            raise ValueError(f"attack results[{index}].control must be true or false "
                             "(true: a control the component must still be able to do)")
    return attacks


# -- the verdict: one function for every output ------------------------------------------------

def judge_check(check: dict) -> dict:
    """The verdict on one check: passed only when the check says passed (a real bool true)."""
    return {"kind": "check", "component": check["component"], "name": check["property"],
            "command": check["command"], "expected": check["expected"],
            "observed": check["observed"], "passed": check["passed"] is True,
            "label": "passed" if check["passed"] is True else "failed", "reason": None}


def judge_attack(attack: dict) -> dict:
    """The verdict on one attack attempt or control.

    An attempt passes when it was blocked as expected; a control when the component could
    still do it. Either passes only if the entry says `passed: true` and its observed outcome
    is its expected one: an attempt that got through (observed "OK" where EPERM was expected)
    fails even when an edited or buggy result file says it passed.
    """
    control = attack.get("control") is True
    said = attack["passed"] is True
    agrees = str(attack["observed"]) == str(attack["expected"])
    passed = said and agrees
    reason = None
    if said and not agrees:
        reason = "marked passed, but the observed outcome is not the expected one"
    if control:
        label = "works" if passed else "control FAILED"
    else:
        label = "blocked" if passed else "NOT blocked"
    return {"kind": "control" if control else "attack", "component": attack["component"],
            "name": f"{'control' if control else 'attack'}: {attack['attempt']}",
            "command": attack["attempt"], "expected": attack["expected"],
            "observed": attack["observed"], "passed": passed, "label": label, "reason": reason,
            "host": attack.get("host"), "errno": attack["errno"],
            "baseline": attack.get("baseline"), "has_baseline": "baseline" in attack}


def judge(evidence: dict, attacks: list[dict] | None = None) -> dict:
    """The verdict on one host's evidence: every check, attack attempt and control judged.

    attacks: the host's attack results when they are not (only) in evidence["attacks"].
    Returns {items, total, failed, failures}; failures are the names of the failed items
    ("component: property" / "component: attack: attempt").
    """
    items = [dict(judge_check(c), host=evidence["host"]) for c in evidence["checks"]]
    for attack in evidence.get("attacks", []) if attacks is None else attacks:
        items.append(dict(judge_attack(attack), host=attack.get("host") or evidence["host"]))
    failed = [i for i in items if not i["passed"]]
    return {"items": items, "total": len(items), "failed": len(failed),
            "failures": [f"{i['component']}: {i['name']}" for i in failed]}


def module_result(evidence: dict) -> dict:
    """What audit_evidence returns for one host: the evidence and judge()'s failure count and
    names (the playbook's kernelfence_audit_fail acts on these)."""
    verdict = judge(evidence)
    return {"changed": False, "evidence": evidence, "failed_checks": verdict["failed"],
            "failures": verdict["failures"]}


def _manifest_version(text: str) -> str | None:
    return (json.loads(text).get("collection_info") or {}).get("version")


def _galaxy_version(text: str) -> str | None:
    import yaml  # the controller has PyYAML (Ansible requires it)

    return (yaml.safe_load(text) or {}).get("version")


def collection_version(root: str) -> dict:
    """The collection's name and version as installed at root (a collection directory).

    An installed collection has MANIFEST.json; a source checkout has galaxy.yml. Read at run
    time, never hard-coded. Raises ValueError naming both files when neither gives a version.
    """
    for name, read in (("MANIFEST.json", _manifest_version), ("galaxy.yml", _galaxy_version)):
        path = os.path.join(root, name)
        try:
            with open(path, encoding="utf-8") as handle:
                version = read(handle.read())
        except FileNotFoundError:
            continue
        except ValueError as exc:
            raise ValueError(f"{path}: not readable as {name} ({exc})") from exc
        if version:
            return {"version": str(version), "source": path}
    raise ValueError(f"no collection version: neither {root}/MANIFEST.json nor "
                     f"{root}/galaxy.yml names one. Fix: run from an installed collection "
                     "(ansible-galaxy collection install) or a checkout with galaxy.yml")


def utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def junit_xml(evidence: dict, version: str | None = None) -> str:
    """JUnit XML of one host's evidence: a testsuite per component, a testcase per check,
    attack attempt and control, each judged by `judge`.

    version: the collection version to record beside the evidence's collection time.
    """
    suites = ElementTree.Element("testsuites", name=f"kernelfence isolation audit "
                                                    f"{evidence['host']}")
    by_component: dict[str, list[dict]] = {}
    for item in judge(evidence)["items"]:
        by_component.setdefault(item["component"], []).append(item)
    total = failures = 0
    for component, checks in by_component.items():
        failed = sum(1 for c in checks if not c["passed"])
        suite = ElementTree.SubElement(
            suites, "testsuite", name=f"{evidence['host']}.{component}",
            tests=str(len(checks)), failures=str(failed), errors="0", skipped="0")
        if evidence.get("collected_at"):
            suite.set("timestamp", evidence["collected_at"].removesuffix("Z"))
        properties = ElementTree.SubElement(suite, "properties")
        for key, value in (("collected_at", evidence.get("collected_at")),
                           ("collection_version", version)):
            if value:
                ElementTree.SubElement(properties, "property", name=key, value=value)
        for item in checks:
            case = ElementTree.SubElement(suite, "testcase", name=item["name"],
                                          classname=f"{evidence['host']}.{component}")
            if not item["passed"]:
                message = (f"{item['label']}: expected {_short(item['expected'])}, "
                           f"observed {_short(item['observed'])}"
                           if item["kind"] != "check" else
                           f"expected {_short(item['expected'])}, "
                           f"observed {_short(item['observed'])}")
                if item["reason"]:
                    message += f" ({item['reason']})"
                failure = ElementTree.SubElement(case, "failure", message=message)
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


# The page is laid out for a 1000 px wide window and for print: the grid's property headers
# are written vertically, its cells only hold the verdict and a footnote number, and every
# failure's expected and observed values are printed in the table under the grid (the
# cells' title= hover repeats them, but nothing relies on it).
CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:20px;color:#1b1f24}
h1{font-size:22px;margin:0 0 4px} h2{font-size:17px;margin:28px 0 8px}
.meta{color:#57606a;font-size:13px;margin-bottom:12px}
table{border-collapse:collapse;font-size:12px;margin-bottom:8px;max-width:100%}
th,td{border:1px solid #d0d7de;padding:4px 6px;text-align:center;overflow-wrap:anywhere}
th{background:#f6f8fa;font-weight:600} td.name{text-align:left;font-weight:600;max-width:130px}
th.prop{padding:4px 2px;vertical-align:bottom;font-size:11px;line-height:1.15}
th.prop span{display:inline-block;writing-mode:vertical-rl;transform:rotate(180deg);
white-space:nowrap}
td.pass,td.fail,td.na{min-width:22px;padding:3px 2px;white-space:nowrap}
td.pass{background:#2da44e;color:#fff} td.fail{background:#cf222e;color:#fff}
td.fail a{color:#fff;text-decoration:none} td.fail sup{font-size:10px;margin-left:1px}
td.na{background:#eaeef2;color:#57606a}
table.wide{width:100%;table-layout:fixed} td.text{text-align:left}
.summary{font-size:14px;margin:8px 0} .bad{color:#cf222e;font-weight:600}
.good{color:#1a7f37;font-weight:600} code{font-size:11px}
details{margin:4px 0 12px} pre{background:#f6f8fa;padding:8px;font-size:11px;
white-space:pre-wrap;overflow-wrap:anywhere}
@media print{body{margin:0}*{-webkit-print-color-adjust:exact;print-color-adjust:exact}
details>pre{display:block}}
"""


def _errno(value: object) -> str:
    if value is None:
        return "none"
    if isinstance(value, int) and value in errno.errorcode:
        return f"{errno.errorcode[value]} ({value})"
    return str(value)


def _cell(item: dict | None, footnote: int | None) -> str:
    if item is None:
        return '<td class="na">&ndash;</td>'
    title = html.escape(f"{item['command']}\nexpected: {_short(item['expected'], 400)}\n"
                        f"observed: {_short(item['observed'], 400)}", quote=True)
    if item["passed"]:
        return f'<td class="pass" title="{title}">✔</td>'
    return (f'<td class="fail" title="{title}"><a href="#failure-{footnote}">✘'
            f"<sup>{footnote}</sup></a></td>")


def _grid(properties: list[str], evidences: list[dict], verdicts: list[dict],
          footnotes: dict[int, int]) -> list[str]:
    """A components x properties table of the given check names: a row per host and component
    that has any of them, a cell per check (verdict and footnote number)."""
    parts = ['<table class="grid"><tr><th>host</th><th>component</th>'
             + "".join(f'<th class="prop"><span>{html.escape(p)}</span></th>'
                       for p in properties) + "</tr>"]
    for evidence, verdict in zip(evidences, verdicts, strict=False):
        by_component: dict[str, dict[str, dict]] = {}
        for item in verdict["items"]:
            if item["kind"] == "check" and item["name"] in properties:
                by_component.setdefault(item["component"], {})[item["name"]] = item
        for component, row in by_component.items():
            parts.append(f'<tr><td class="name">{html.escape(evidence["host"])}</td>'
                         f'<td class="name">{html.escape(component)}</td>'
                         + "".join(_cell(row.get(p), footnotes.get(id(row.get(p))))
                                   for p in properties) + "</tr>")
    parts.append("</table>")
    return parts


def _value(value: object) -> str:
    return html.escape(value if isinstance(value, str) else json.dumps(value))


def html_report(evidences: list[dict], attacks: list[dict] | None = None,
                version: str | None = None, generated_at: str | None = None) -> str:
    """One self-contained HTML page for every host: the matrix, exposure, attacks, details.

    Every pass/fail on the page is `judge`'s. attacks: results to show instead of the
    evidences' own (each may name its `host`); version: the collection version that made the
    report; generated_at: its UTC time (now when not given).
    """
    generated_at = generated_at or utc_now()
    if attacks is None:
        verdicts = [judge(e) for e in evidences]
    else:
        hosts = {e["host"] for e in evidences}
        verdicts = [judge(e, [a for a in attacks if a.get("host") == e["host"]])
                    for e in evidences]
        stray = [a for a in attacks if a.get("host") not in hosts]
        if stray:
            verdicts.append(judge({"host": "", "checks": []}, stray))
    items = [i for v in verdicts for i in v["items"]]
    checks = [i for i in items if i["kind"] == "check"]
    attempts = [i for i in items if i["kind"] != "check"]
    failures = [i for i in items if not i["passed"]]
    footnotes = {id(item): n for n, item in enumerate(failures, 1)}
    properties: list[str] = []
    for item in checks:
        if item["name"] not in properties:
            properties.append(item["name"])
    made_by = f"kernelfence.isolation {version}" if version else "kernelfence.isolation"
    counted = f"{len(checks)} checks" + (
        f", {sum(i['kind'] == 'attack' for i in attempts)} attack attempts and "
        f"{sum(i['kind'] == 'control' for i in attempts)} controls" if attempts else "")
    parts = ["<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">",
             '<meta name="viewport" content="width=device-width">',
             "<title>kernelfence isolation audit</title>", f"<style>{CSS}</style></head><body>",
             "<h1>kernelfence isolation audit</h1>",
             f'<div class="meta">Generated <time datetime="{html.escape(generated_at)}">'
             f"{html.escape(generated_at)}</time> (UTC) by {html.escape(made_by)}; "
             f"{len(evidences)} host(s); evidence read from the kernel "
             "(/proc) and systemd on each host.</div>",
             f'<div class="summary">{counted}: '
             + (f'<span class="bad">{len(failures)} failed</span>' if failures
                else '<span class="good">all passed</span>') + "</div>",
             "<h2>Components &times; properties</h2>"]
    # The resource limits get a grid of their own, a column per limit: beside the isolation
    # properties they would not fit a 1000 px window.
    limits = [p for p in properties if p in LIMIT_NAMES]
    parts += _grid([p for p in properties if p not in limits], evidences, verdicts, footnotes)
    if limits:
        parts.append("<h2>Components &times; resource limits</h2>")
        parts += _grid(limits, evidences, verdicts, footnotes)
    if failures:
        parts.append("<h2>Failures</h2>"
                     '<table class="wide"><colgroup><col style="width:4%">'
                     '<col style="width:11%"><col style="width:12%"><col style="width:17%">'
                     '<col style="width:18%"><col style="width:20%"><col style="width:18%">'
                     "</colgroup><tr><th>#</th><th>host</th><th>component</th><th>check</th>"
                     "<th>expected</th><th>observed</th><th>command</th></tr>")
        for number, item in enumerate(failures, 1):
            what = item["name"] if item["kind"] == "check" else f"{item['name']} ({item['label']})"
            if item["reason"]:
                what += f": {item['reason']}"
            parts.append(
                f'<tr id="failure-{number}"><td>{number}</td>'
                f'<td class="name">{html.escape(str(item.get("host") or ""))}</td>'
                f'<td class="name">{html.escape(str(item["component"]))}</td>'
                f'<td class="text">{html.escape(what)}</td>'
                f'<td class="text expected">{_value(item["expected"])}</td>'
                f'<td class="text observed">{_value(item["observed"])}</td>'
                f'<td class="text"><code>{html.escape(str(item["command"]))}</code></td></tr>')
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
                f'<td class="text">{html.escape(worst)}</td></tr>')
    parts.append("</table>")
    parts.append("<h2>Attack matrix</h2>")
    if attempts:
        # The probe's baseline: the same attempt as the same user without the confinement.
        with_baseline = any(i["has_baseline"] for i in attempts)
        parts.append("<table><tr><th>host</th><th>component</th><th>attempt</th>"
                     "<th>expected</th><th>observed</th><th>errno</th><th>result</th>"
                     + ("<th>without confinement</th>" if with_baseline else "") + "</tr>")
        for item in attempts:
            css = "pass" if item["passed"] else "fail"
            note = footnotes.get(id(item))
            result = html.escape(item["label"]) + (f"<sup>{note}</sup>" if note else "")
            parts.append(
                f'<tr><td class="name">{html.escape(str(item.get("host") or ""))}</td>'
                f'<td class="name">{html.escape(str(item["component"]))}</td>'
                f'<td class="text">{html.escape(str(item["command"]))}</td>'
                f"<td>{html.escape(str(item['expected']))}</td>"
                f"<td>{html.escape(str(item['observed']))}</td>"
                f"<td>{html.escape(_errno(item['errno']))}</td>"
                f'<td class="{css}">{result}</td>'
                + (f"<td>{html.escape(str(item['baseline'] or ''))}</td>"
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
        collected = evidence.get("collected_at")
        parts.append(f"<details><summary><b>{html.escape(evidence['host'])}</b>: "
                     + (f"collected {html.escape(collected)}; " if collected else "")
                     + f"{html.escape(versions)}</summary><pre>"
                     + html.escape(json.dumps(evidence["checks"], indent=1)) + "</pre></details>")
    parts.append("</body></html>\n")
    return "\n".join(parts)
