#!/usr/bin/python
# Copyright: (c) 2026, kernelfence contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: component_health
short_description: Health-check component services, roll a failing one back, say why it failed
version_added: "0.1.0"
description:
  - Watches every service over a window (its restart counter must not move and it must end
    active), then sends each configured probe request to the component's unix socket and
    expects a one-line JSON answer carrying a given key.
  - When a service fails, reads why from systemd (C(systemctl show), C(journalctl -o json) of
    the unit and the kernel's seccomp audit records), that is the exit status (for example
    C(226/NAMESPACE)), the unit line systemd could not apply, the syscalls the kernel's filter
    stopped, the workload's last output and what this run changed in the unit.
  - Then puts back the files this run changed for the failing components (O(previous), as
    returned by M(kernelfence.isolation.unit_install); binary C(current) links as well),
    reloads systemd, restarts them, checks them again, and fails with one sentence per failing
    unit that names the cause, the fix and the outcome of the rollback.
author: kernelfence contributors (@kernelfence)
attributes:
  check_mode:
    description: Nothing to check before the change exists; in check mode it reports the
      services it would watch and changes nothing.
    support: full
  diff_mode:
    description: Not applicable.
    support: none
  platform:
    description: Targets with systemd.
    support: full
    platforms: posix
options:
  services:
    description:
      - The units to watch, as the component_unit role renders them (C(name), C(component),
        C(content), the text of the unit or drop-in this run installed); only C(.service) units
        are watched. C(content) is read to find the line behind a set-up failure.
    type: list
    elements: dict
    required: true
  components:
    description: The normalized component records (for the socket paths of O(probes)).
    type: list
    elements: dict
    default: []
  probes:
    description:
      - Per component name, a request sent to one of its unix sockets once the service is up
        (C(socket) the socket's name in the model, C(request) one line of JSON text,
        C(expect) a key the one-line JSON answer must carry).
    type: dict
    default: {}
  window:
    description:
      - Seconds the restart counters must stay still.
      - With O(since), skipped (one look at the states, the probes still run) only when this
        run changed nothing (O(previous), O(previous_binaries) and O(previous_ruleset) empty)
        and no service's main process started at or after O(since), as in an idempotent re-run.
    type: int
    default: 12
  probe_timeout:
    description: Seconds a probe may take to answer.
    type: int
    default: 300
  since:
    description: Host time (seconds since the epoch) from which the journal belongs to this
      run; defaults to the window's start minus 120 seconds.
    type: float
  previous:
    description: Files as they were before this run (M(kernelfence.isolation.unit_install)'s
      C(previous)), optionally with C(link) entries for binary C(current) symlinks; an entry
      with C(content_base64) (a compiled seccomp program) is written back as those bytes.
    type: list
    elements: dict
    default: []
  previous_binaries:
    description: Binaries this run switched (the verified_binary role's C(previous)), as
      C(component/name) mapped to the version directory C(current) pointed at before; a failing
      component's C(current) link is pointed back at it.
    type: dict
    default: {}
  previous_ruleset:
    description:
      - The network policy as it was before this run, when this run changed it (the
        network_policy role's C(path), C(content), C(mode) and the C(unit) that loads it).
        The ruleset is shared by every component, so when any service fails its file is put
        back and its unit restarted (one C(nft -f) transaction replacing the kernelfence table)
        before the services are restarted.
    type: dict
    default: {}
  rollback:
    description: Put a failing component's previous files back and restart it.
    type: bool
    default: true
"""

EXAMPLES = r"""
- name: Health-check the components, roll back a failing one
  kernelfence.isolation.component_health:
    services:
      - {name: kf-model_backend.service, component: model_backend}
    components: "{{ __kernelfence_components }}"
    probes:
      model_backend: {socket: model.sock, request: '{"prompt": "health"}', expect: answer}
    previous: "{{ installed.previous }}"
    since: "{{ installed.installed_at }}"
"""

RETURN = r"""
healthy:
  description: Services that passed.
  returned: always
  type: list
  elements: str
failures:
  description: Per failing service, what systemd and the kernel said (exit status, directive,
    syscalls, last output, fix, text).
  returned: always
  type: list
  elements: dict
window:
  description: Seconds the services were watched (0 when none of them started in this run).
  returned: always
  type: int
rolled_back:
  description: Files put back to their previous version (or removed when new in this run).
  returned: always
  type: list
  elements: str
after_rollback:
  description: Per rolled-back service, its state after the restart (C(active) or what failed).
  returned: always
  type: dict
"""

import base64
import json
import os
import socket
import tempfile
import time

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.kernelfence.isolation.plugins.module_utils.unit_failure import (
    explain,
    parse_journal,
    parse_show,
)
from ansible_collections.kernelfence.isolation.plugins.module_utils.verified_install import (
    refresh_inventory,
)

SHOW_PROPS = ("Id,NRestarts,ActiveState,SubState,Result,ExecMainCode,ExecMainStatus,"
              "ExecMainStartTimestampMonotonic")


def _services(module: AnsibleModule, units: list[dict], components: list[dict],
              probes: dict) -> list[dict]:
    """The .service units with the probe of their component, its socket resolved to a path."""
    sockets = {c.get("name"): {s.get("name"): s.get("path") for s in c.get("sockets") or []}
               for c in components}
    out = []
    for unit in units:
        if not str(unit.get("name", "")).endswith(".service"):
            continue
        component = unit.get("component")
        service = {"name": unit["name"], "component": component,
                   "content": unit.get("content") or "", "probe": None}
        probe = probes.get(component)
        if probe:
            missing = [k for k in ("socket", "request", "expect") if not probe.get(k)]
            path = sockets.get(component, {}).get(probe.get("socket"))
            if missing or not path:
                module.fail_json(msg=f"component_unit_health_probes[{component}]: "
                                     + (f"missing {', '.join(missing)}" if missing else
                                        f"{probe.get('socket')!r} is not a socket of {component}")
                                     + ". Fix: give socket (a name from the component's sockets),"
                                       " request and expect")
            service["probe"] = {"socket": path, "request": str(probe["request"]),
                                "expect": str(probe["expect"])}
        out.append(service)
    return out


def _show(module: AnsibleModule, names: list[str]) -> dict[str, dict[str, str]]:
    rc, out, err = module.run_command(["systemctl", "show", "-p", SHOW_PROPS, *names])
    if rc != 0:
        module.fail_json(msg=f"systemctl show failed: {err.strip()}")
    blocks = [parse_show(b) for b in out.strip().split("\n\n")]
    return dict(zip(names, blocks, strict=False))


def _started_since(shows: dict[str, dict[str, str]], since: float,
                   now_real: float, now_mono: float) -> list[str]:
    """Services whose main process started at or after `since` (seconds since the epoch).

    systemd stamps starts on CLOCK_MONOTONIC (microseconds), as time.monotonic() reads it; the
    epoch time is carried over by the distance from now. A service that never ran (stamp 0) or
    is not active counts as started: the window then judges it.
    """
    since_mono_us = (now_mono - (now_real - since)) * 1e6
    fresh = []
    for name, show in shows.items():
        try:
            stamp = int(show.get("ExecMainStartTimestampMonotonic") or 0)
        except ValueError:
            stamp = 0
        if stamp == 0 or stamp >= since_mono_us - 1e6 or show.get("ActiveState") != "active":
            fresh.append(name)
    return fresh


def _window_seconds(window: int, changed: bool, shows: dict[str, dict[str, str]],
                    since: float, now_real: float, now_mono: float) -> int:
    """The window is skipped only for a run that changed nothing (no file, binary or policy)
    and started nothing: an idempotent re-run. A change that restarted a service before
    `since` (a handler flushed earlier in the play) or restarted none (a policy change)
    still gets the whole window."""
    if changed or _started_since(shows, since, now_real, now_mono):
        return window
    return 0


def _state_failures(before: dict, after: dict) -> dict[str, str]:
    bad = {}
    for name, now in after.items():
        moved = before.get(name, {}).get("NRestarts") != now.get("NRestarts")
        if moved or now.get("ActiveState") != "active":
            bad[name] = (f"restarted {before.get(name, {}).get('NRestarts')} -> "
                         f"{now.get('NRestarts')} times" if moved else
                         f"{now.get('ActiveState')}/{now.get('SubState')}")
    return bad


def _probe(probe: dict, timeout: int) -> str | None:
    """None when the socket answers with JSON carrying the expected key, else why not."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(probe["socket"])
            sock.sendall(probe["request"].encode() + b"\n")
            data = b""
            while not data.endswith(b"\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
    except OSError as exc:
        return f"probe on {probe['socket']} failed: {exc}"
    try:
        answer = json.loads(data)
    except ValueError:
        return f"probe on {probe['socket']} answered no JSON: {data[:200]!r}"
    if not isinstance(answer, dict) or probe["expect"] not in answer:
        return (f"probe on {probe['socket']} answered without '{probe['expect']}': "
                f"{json.dumps(answer)[:300]}")
    return None


def _watch(module: AnsibleModule, services: list[dict], window: int,
           timeout: int) -> dict[str, str]:
    names = [s["name"] for s in services]
    bad = _state_failures(*_window(module, names, window))
    if bad:
        # One restart right after a change can be a peer that was not up yet; a crash loop
        # moves again in a second window.
        bad = _state_failures(*_window(module, list(bad), window))
    if bad:
        return bad  # a probe through a crash-looping peer would blame the wrong component
    for service in services:
        if service.get("probe"):
            why = _probe(service["probe"], timeout)
            if why:
                bad[service["name"]] = why
    return bad


def _window(module: AnsibleModule, names: list[str], window: int) -> tuple[dict, dict]:
    before = _show(module, names)
    time.sleep(window)
    return before, _show(module, names)


def _journal(module: AnsibleModule, unit: str, since: float) -> list[dict]:
    stamp = f"@{int(since)}"
    entries = []
    for argv in (["journalctl", "-o", "json", "--no-pager", "-n", "400", "--since", stamp,
                  "-u", unit],
                 ["journalctl", "-o", "json", "--no-pager", "--since", stamp,
                  "_TRANSPORT=audit", "+", "_TRANSPORT=kernel"]):
        _rc, out, _err = module.run_command(argv)
        entries += parse_journal(out)
    return sorted(entries, key=lambda e: int(e.get("__REALTIME_TIMESTAMP", 0)))


def _restore_file(entry: dict) -> None:
    path = entry["path"]
    if entry.get("link") is not None:
        tmp = f"{path}.kf-rollback"
        if os.path.lexists(tmp):
            os.unlink(tmp)
        os.symlink(entry["link"], tmp)
        os.rename(tmp, path)
        return
    if entry.get("content") is None:
        if os.path.lexists(path):
            os.unlink(path)
        return
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".kf-rollback-")
    if entry.get("content_base64") is not None:  # a compiled seccomp program (unit_install)
        with os.fdopen(fd, "wb") as fh:
            fh.write(base64.b64decode(entry["content_base64"]))
    else:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(entry["content"])
    os.chown(tmp, int(entry.get("uid", 0)), int(entry.get("gid", 0)))
    os.chmod(tmp, int(str(entry.get("mode", "0o644")), 8))
    os.rename(tmp, path)


def _rollback(module: AnsibleModule, components: set, previous: list[dict],
              services: list[dict], ruleset: dict | None = None
              ) -> tuple[list[str], list[str], list[str]]:
    """Put the components' previous files back (and the network policy, shared by all of them,
    when this run changed it); return (restored paths, units restarted, errors). An error on
    the way (a file that cannot be written back, the previous policy not loading again) is
    reported, never a reason to leave the stopped services down."""
    entries = [e for e in previous if e.get("component") in components]
    if ruleset:
        entries.append({"path": ruleset["path"], "content": ruleset["content"],
                        "mode": ruleset.get("mode", "0600"), "component": None})
    if not entries:
        return [], [], []
    errors: list[str] = []
    units = [s["name"] for s in services if s.get("component") in components]
    sockets = sorted({e["unit"] for e in entries if (e.get("unit") or "").endswith(".socket")})
    new_units = [e["unit"] for e in entries if e.get("content") is None and e.get("unit")
                 and e["path"].endswith(e["unit"])]
    # A unit this run created has no previous version: it goes away, as before the run.
    if new_units:
        module.run_command(["systemctl", "disable", "--now", *new_units])
    module.run_command(["systemctl", "stop", *units, *sockets])
    restored = []
    for entry in entries:
        try:
            _restore_file(entry)
            restored.append(entry["path"])
        except OSError as exc:
            errors.append(f"rollback of {entry['path']} failed: {exc}. Fix: restore it by hand "
                          "from the play's previous output")
    module.run_command(["systemctl", "daemon-reload"])
    if ruleset and ruleset["path"] in restored:
        # The previous ruleset was loaded before this run: loading it again replaces our table
        # in one transaction, before the services come back under it.
        rc, _out, err = module.run_command(["systemctl", "restart", ruleset["unit"]])
        if rc != 0:
            # nft -f is one transaction: the table loaded now stays; the services still come
            # back (under it) rather than stay stopped, and the play fails with this.
            errors.append(f"rollback of the network policy: {ruleset['unit']} did not load "
                          f"{ruleset['path']} again (the file is back, this run's table stays "
                          f"loaded): {err.strip()}. Fix: check it with nft -c -f "
                          f"{ruleset['path']}")
    restart = [u for u in [*sockets, *units] if u not in new_units]
    if restart:
        module.run_command(["systemctl", "reset-failed", *restart])
        for unit in restart:
            module.run_command(["systemctl", "start", unit])
    return restored, [u for u in restart if u.endswith(".service")], errors


def main():
    module = AnsibleModule(
        argument_spec={
            "services": {"type": "list", "elements": "dict", "required": True},
            "components": {"type": "list", "elements": "dict", "default": []},
            "probes": {"type": "dict", "default": {}},
            "window": {"type": "int", "default": 12},
            "probe_timeout": {"type": "int", "default": 300},
            "since": {"type": "float"},
            "previous": {"type": "list", "elements": "dict", "default": []},
            "previous_binaries": {"type": "dict", "default": {}},
            "previous_ruleset": {"type": "dict", "default": {}},
            "rollback": {"type": "bool", "default": True},
        },
        supports_check_mode=True,
    )
    p = module.params
    services = _services(module, p["services"], p["components"], p["probes"])
    p["previous"] = list(p["previous"]) + [
        {"path": os.path.join(os.path.dirname(str(old)), "current"),
         "link": os.path.basename(str(old)), "component": label.split("/")[0], "unit": None}
        for label, old in sorted(p["previous_binaries"].items())]
    result = {"changed": False, "healthy": [], "failures": [], "rolled_back": [],
              "after_rollback": {}, "window": p["window"]}
    if module.check_mode or not services:
        result["healthy"] = [s["name"] for s in services]
        module.exit_json(**result)
    since = p["since"] if p["since"] is not None else time.time() - 120
    window = p["window"]
    if p["since"] is not None:
        window = _window_seconds(window, bool(p["previous"] or p["previous_ruleset"]),
                                 _show(module, [s["name"] for s in services]), since,
                                 time.time(), time.monotonic())
    result["window"] = window
    bad = _watch(module, services, window, p["probe_timeout"])
    result["healthy"] = [s["name"] for s in services if s["name"] not in bad]
    if not bad:
        module.exit_json(**result)

    by_name = {s["name"]: s for s in services}
    shows = _show(module, list(bad))
    before_text = {e.get("unit"): e.get("content") for e in p["previous"]
                   if e.get("unit") and not e.get("path", "").endswith(".json")}
    for name, why in bad.items():
        service = by_name[name]
        failure = explain(name, shows.get(name, {}), _journal(module, name, since),
                          service["content"], service.get("component"), before_text.get(name))
        ruleset = p["previous_ruleset"]
        comp = service.get("component")
        general_fix = failure["fix"]
        switched = sorted(label for label in p["previous_binaries"]
                          if label.split("/")[0] == comp)
        unit_changed = comp in {e.get("component") for e in p["previous"] if "link" not in e}
        if (switched and not unit_changed and not failure.get("directive")
                and not failure.get("syscalls")):
            # Its unit did not change in this run, its binary did: the likely cause (a syscall
            # the kernel named keeps explain()'s sharper fix).
            failure["fix"] = (f"this run switched {', '.join(switched)} to a new version, which "
                              "fails here: fix that build, or keep the version that ran before "
                              f"in kernelfence_components[{comp}].artifacts"
                              + (" (it was put back)" if p["rollback"] else ""))
        elif ruleset and comp not in {e.get("component") for e in p["previous"]}:
            # Neither its unit nor its binary changed in this run, the network policy did.
            failure["fix"] = (f"this run changed the network policy ({ruleset.get('path')}): "
                              f"make kernelfence_components[{comp}].network allow what it "
                              "must reach, or undo that change")
        if why.startswith("probe"):
            failure["text"] = f"{name} failed its health check: {why}. Fix: {failure['fix']}"
        elif failure["fix"] != general_fix:
            failure["text"] = failure["text"].replace(f"Fix: {general_fix}",
                                                      f"Fix: {failure['fix']}")
        failure["check"] = why
        result["failures"].append(failure)

    components = {by_name[n].get("component") for n in bad}
    restarted: list[str] = []
    rollback_errors: list[str] = []
    if p["rollback"]:
        ruleset = p["previous_ruleset"] or None
        if ruleset and not all(ruleset.get(k) is not None for k in ("path", "content", "unit")):
            module.fail_json(msg="previous_ruleset needs path, content and unit")
        result["rolled_back"], restarted, rollback_errors = _rollback(
            module, components, p["previous"], services, ruleset)
        # A binary link moved back: the host's inventory must list the version that runs.
        for root in sorted({os.path.dirname(os.path.dirname(os.path.dirname(str(old))))
                            for label, old in p["previous_binaries"].items()
                            if label.split("/")[0] in components}):
            try:
                refresh_inventory(root)
            except (OSError, KeyError, ValueError) as exc:
                # The rollback itself is done; a stale inventory must not hide why it happened.
                module.warn(f"{root}/inventory.json could not be read back after the rollback: "
                            f"{exc}; the next verified_binary run rewrites it")
        result["changed"] = bool(result["rolled_back"])
    # The network policy is shared: after putting it back, every component is watched again,
    # not only the restarted ones.
    watch_again = (list(by_name) if p["rollback"] and p["previous_ruleset"] and restarted
                   else restarted)
    if watch_again:
        again = _watch(module, [by_name[n] for n in watch_again], p["window"],
                       p["probe_timeout"])
        result["after_rollback"] = {n: again.get(n, "active") for n in watch_again}
    changed_components = {e.get("component") for e in p["previous"]}
    unchanged = sorted(n for n in bad if by_name[n].get("component") not in changed_components
                       and not p["previous_ruleset"])
    outcome = []
    if result["rolled_back"]:
        states = ", ".join(f"{n}: {s}" for n, s in result["after_rollback"].items())
        restored = ", ".join(result["rolled_back"])
        outcome.append(f"Rolled back to the previous good version ({restored}); "
                       f"after the rollback {states or 'no service to restart'}")
    outcome.extend(rollback_errors)
    if unchanged:
        outcome.append(f"Not changed by this run, nothing to roll back to: {', '.join(unchanged)}")
    module.fail_json(msg=" | ".join(f["text"] for f in result["failures"])
                     + ". " + ". ".join(outcome), **result)


if __name__ == "__main__":
    main()
