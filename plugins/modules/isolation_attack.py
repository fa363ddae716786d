#!/usr/bin/python
# Copyright: (c) 2026, kernelfence contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: isolation_attack
short_description: Attack the other components from inside one component's confinement
version_added: "0.1.0"
description:
  - Runs the attack probe as a compromised component would, in a runtime sibling of the
    component's unit (its own text from C(systemctl cat), every sandboxing, identity, seccomp and
    network directive unchanged, C(JoinsNamespaceOf=) the unit, only the command replaced by the
    probe) tries to read the other components' credentials and state, write the model backend's
    data and socket, see, signal and ptrace their processes, create namespaces, load modules,
    use C(bpf), C(perf_event_open), C(keyctl), C(kexec_load), C(io_uring), raw and packet
    sockets, change the clock and hostname, reboot, gain root through a setuid program, write the
    host file system, read devices, map writable and executable memory, and reach endpoints
    outside its network allow list. Each attempt has an exact expected errno.
  - Controls that must succeed (its own state, its allowed endpoint, a socket of its own, an
    C(EFAULT) from a bad pointer) show that the probe works.
  - With O(baseline), the same plan runs as the component's user in a plain unit without any
    hardening, to show what the confinement takes away.
  - Endpoints the network attempts need are served by the module itself on the host's
    loopback for the duration of the run; nothing is sent outside the host.
  - Leaves nothing behind; the runtime units under C(/run/systemd/system) and the probe under
    C(/run/kf-attack) are removed after the run.
author: kernelfence contributors (@kernelfence)
attributes:
  check_mode:
    description: In check mode nothing runs and nothing is reported.
    support: none
  diff_mode:
    description: Changes nothing that persists, so there is nothing to diff.
    support: none
  platform:
    description: x86_64 targets with systemd 252 or later.
    support: full
    platforms: posix
options:
  component:
    description: Name of the component whose compromise is simulated.
    type: str
    required: true
  components:
    description:
      - The component model after validation (the C(__kernelfence_components) the
        C(component_model) preflight sets), from which the targets are taken.
    type: list
    elements: dict
    required: true
  baseline:
    description: Also run the plan in a plain unit as the component's user.
    type: bool
    default: true
  fail_on_escape:
    description:
      - Fail when an attempt succeeds, an attempt fails with another errno than expected, or
        a control fails.
    type: bool
    default: true
"""

EXAMPLES = r"""
- name: Prove a compromised executor cannot move laterally
  kernelfence.isolation.isolation_attack:
    component: executor
    components: "{{ __kernelfence_components }}"
  register: attack
"""

RETURN = r"""
summary:
  description: Counts and the ids of escapes, unexpected outcomes and failed controls.
  returned: success
  type: dict
rows:
  description: One row per attempt (id, category, attempt, expected, observed, passed, baseline).
  returned: success
  type: list
  elements: dict
attacks:
  description: The rows in the audit report's attack format (component, attempt, expected,
    observed, errno, passed, control, baseline); C(control) is true for the controls (what
    the component must still be able to do).
  returned: success
  type: list
  elements: dict
units:
  description: The text of the runtime units the probe ran in.
  returned: success
  type: dict
"""

import contextlib
import errno
import inspect
import json
import os
import shutil
import socket
import subprocess
import threading

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.kernelfence.isolation.plugins.module_utils import attack_probe
from ansible_collections.kernelfence.isolation.plugins.module_utils.attack_plan import (
    PROBE_DIR,
    baseline_unit,
    build_plan,
    evaluate,
    sibling_unit,
)

RUNTIME_UNITS = "/run/systemd/system"


def _run(argv: list[str], timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)


def _first_file(path: str) -> str | None:
    for root, dirs, files in os.walk(path):
        dirs.sort()
        for name in sorted(files):
            candidate = os.path.join(root, name)
            if os.path.isfile(candidate) and not os.path.islink(candidate):
                return candidate
    return None


def _block_device() -> str | None:
    for name in sorted(os.listdir("/sys/block")):
        if not name.startswith(("loop", "ram", "zram")) and os.path.exists(f"/dev/{name}"):
            return f"/dev/{name}"
    return None


def _unit_of(record: dict) -> str:
    return record.get("unit") or f"kf-{record['name']}.service"


class Endpoints:
    """Loopback servers the network attempts aim at (TCP accept, UDP echo), as root."""

    def __init__(self, tcp: list[tuple[str, int]], udp: list[tuple[str, int]]):
        self.sockets: list[socket.socket] = []
        self.skipped: list[str] = []
        for host, port in tcp:
            self._open(socket.SOCK_STREAM, host, port)
        for host, port in udp:
            self._open(socket.SOCK_DGRAM, host, port)
        self._stop = False
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _open(self, kind: int, host: str, port: int) -> None:
        sock = socket.socket(socket.AF_INET, kind)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:  # someone serves it already (their server answers) or no such
            sock.close()
            self.skipped.append(f"{host}:{port} {errno.errorcode.get(exc.errno, exc.errno)}")
            return
        if kind == socket.SOCK_STREAM:
            sock.listen(16)
        sock.settimeout(0.2)
        self.sockets.append(sock)

    def _serve(self) -> None:
        while not self._stop:
            for sock in self.sockets:
                try:
                    if sock.type == socket.SOCK_STREAM:
                        sock.accept()[0].close()
                    else:
                        data, peer = sock.recvfrom(512)
                        sock.sendto(data, peer)
                except OSError:
                    continue

    def close(self) -> None:
        self._stop = True
        self._thread.join(timeout=5)
        for sock in self.sockets:
            sock.close()


def _network_targets(plan: list[dict]) -> tuple[list, list]:
    tcp = [(i["args"][0], int(i["args"][1])) for i in plan if i["kind"] == "tcp_connect"]
    udp = [(i["args"][0], int(i["args"][1])) for i in plan if i["kind"] == "udp_exchange"]
    return sorted(set(tcp)), sorted(set(udp))


def _probe_source() -> str:
    return inspect.getsource(attack_probe)


def run(module: AnsibleModule) -> dict:
    records = module.params["components"]
    attacker = next((r for r in records if r.get("name") == module.params["component"]), None)
    if attacker is None:
        module.fail_json(msg=f"component: no component named {module.params['component']!r} "
                             f"in components ({', '.join(r.get('name', '?') for r in records)}). "
                             "Fix: name one of them")
    if not attacker.get("command"):
        module.fail_json(msg=f"component {attacker['name']}: it has no command; the probe takes "
                             "the command's place in its unit. Fix: attack a component with a "
                             "command")
    version = int(_run(["systemctl", "--version"]).stdout.split()[1])
    pids = {}
    for record in records:
        shown = _run(["systemctl", "show", "-P", "MainPID", _unit_of(record)]).stdout.strip()
        if shown.isdigit() and int(shown) > 0:
            pids[record["name"]] = int(shown)
    files = {}
    for record in records:
        for path in record.get("readonly_paths") or []:
            files[path] = _first_file(path)
    markers = [f"{d}/.kf-attack-marker" for d in ("/tmp", "/var/tmp", "/dev/shm")
               if os.path.isdir(d)]
    facts = {"pids": pids, "host_pid": os.getpid(), "files": files,
             "block_device": _block_device(), "markers": markers}
    plan = build_plan(attacker, records, version, facts)

    unit = _unit_of(attacker)
    merged = _run(["systemctl", "cat", "--no-pager", unit])
    if merged.returncode != 0:
        module.fail_json(msg=f"component {attacker['name']}: systemctl cat {unit} failed: "
                             f"{merged.stderr.strip()}. Fix: deploy it first (site.yml)")
    probe = f"{PROBE_DIR}/attack_probe.py"
    argv = ["/usr/bin/python3", probe, f"{PROBE_DIR}/plan.json"]
    confined_unit = f"kf-attack-{attacker['name']}.service"
    baseline_name = f"kf-attack-{attacker['name']}-baseline.service"
    confined_out = f"{PROBE_DIR}/confined.json"
    baseline_out = f"{PROBE_DIR}/baseline.json"
    try:
        texts = {confined_unit: sibling_unit(merged.stdout, attacker, argv, confined_out)}
    except ValueError as exc:
        module.fail_json(msg=f"component {attacker['name']}: {exc}")
    if module.params["baseline"]:
        texts[baseline_name] = baseline_unit(attacker, argv, baseline_out)

    outputs = {}
    endpoints = None
    try:
        os.makedirs(PROBE_DIR, mode=0o755, exist_ok=True)
        os.chmod(PROBE_DIR, 0o755)
        with open(probe, "w", encoding="utf-8") as handle:
            handle.write(_probe_source())
        with open(f"{PROBE_DIR}/plan.json", "w", encoding="utf-8") as handle:
            json.dump([{k: i[k] for k in ("id", "kind", "args")} for i in plan], handle)
        for path in (probe, f"{PROBE_DIR}/plan.json"):
            os.chmod(path, 0o644)
        for marker in markers:  # left by "another user" (root) where a sandbox must not look
            with open(marker, "w", encoding="utf-8") as handle:
                handle.write("kernelfence attack probe marker\n")
            os.chmod(marker, 0o644)
        for name, text in texts.items():
            with open(f"{RUNTIME_UNITS}/{name}", "w", encoding="utf-8") as handle:
                handle.write(text)
        _run(["systemctl", "daemon-reload"])
        endpoints = Endpoints(*_network_targets(plan))
        for name, out in ((confined_unit, confined_out), (baseline_name, baseline_out)):
            if name not in texts:
                continue
            started = _run(["systemctl", "start", name], timeout=400)
            try:
                with open(out, encoding="utf-8") as handle:
                    outputs[name] = json.load(handle)
            except (OSError, ValueError) as exc:
                journal = _run(["journalctl", "--no-pager", "-n", "30", "-u", name]).stdout
                module.fail_json(msg=f"the probe in {name} gave no result ({exc}); systemctl "
                                     f"start: {started.stderr.strip()}", journal=journal,
                                 unit=texts[name])
    finally:
        if endpoints:
            endpoints.close()
        for name in texts:
            _run(["systemctl", "stop", name])
            _run(["systemctl", "reset-failed", name])
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f"{RUNTIME_UNITS}/{name}")
        _run(["systemctl", "daemon-reload"])
        shutil.rmtree(PROBE_DIR, ignore_errors=True)
        for marker in markers:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(marker)

    confined = outputs[confined_unit]
    if "results" not in confined:
        module.fail_json(msg=f"the probe failed in {confined_unit}: {confined}")
    baseline = outputs.get(baseline_name, {}).get("results") if module.params["baseline"] else None
    judged = evaluate(plan, confined["results"], baseline)
    attacks = [{"component": attacker["name"], "attempt": r["attempt"],
                "expected": r["expected"], "observed": r["observed"],
                "errno": r["observed"] if r["observed"].startswith("E") else None,
                "passed": r["passed"], "control": r["control"], "baseline": r.get("baseline")}
               for r in judged["rows"]]
    return {"changed": False, "summary": judged["summary"], "rows": judged["rows"],
            "attacks": attacks, "units": texts, "identity": confined.get("identity"),
            "baseline_identity": outputs.get(baseline_name, {}).get("identity"),
            "endpoints_skipped": endpoints.skipped if endpoints else [],
            "systemd": version}


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "component": {"type": "str", "required": True},
            "components": {"type": "list", "elements": "dict", "required": True},
            "baseline": {"type": "bool", "default": True},
            "fail_on_escape": {"type": "bool", "default": True},
        },
        supports_check_mode=False,
    )
    result = run(module)
    summary = result["summary"]
    bad = summary["escaped"] + summary["unexpected"] + summary["controls_failed"]
    if module.params["fail_on_escape"] and bad:
        rows = {r["id"]: r for r in result["rows"]}
        detail = "; ".join(f"{i}: expected {rows[i]['expected']}, got {rows[i]['observed']}"
                           for i in bad)
        module.fail_json(msg=f"component {module.params['component']}: {len(bad)} attempt(s) "
                             f"did not end as expected: {detail}", **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
