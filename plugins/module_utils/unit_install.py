# Copyright: (c) 2026, kernelfence contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Validate-then-apply for systemd units: everything is checked in a private staging directory
and nothing under the unit directory changes unless every unit passed.

A full unit is staged as it will be installed. A drop-in for a unit the host already has is
staged beside a copy of that unit and of its other drop-ins, so `systemd-analyze verify` and the
offline exposure score judge the unit exactly as systemd will load it.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import shutil
import tempfile
from collections.abc import Callable

from ansible_collections.kernelfence.isolation.plugins.module_utils.systemd_analyze import (
    parse_security,
    parse_verify,
    systemd_features,
    unenforced_directives,
    unit_load_order,
    verify_errors,
)

# run(argv) -> (rc, stdout, stderr), like AnsibleModule.run_command.
Runner = Callable[[list[str]], tuple[int, str, str]]

DROPIN_DIRS = ("/etc/systemd/system", "/run/systemd/system", "/usr/lib/systemd/system",
               "/lib/systemd/system")


class UnitInstallError(ValueError):
    """A unit that must not be installed; the text names the component, the field and the fix.

    scores holds the exposure of every gated unit that could be scored, also when the unit
    failed verification.
    """

    def __init__(self, message: str, scores: dict[str, dict] | None = None):
        super().__init__(message)
        self.scores = scores or {}


def describe_findings(findings: list[dict], unit: dict, version: str) -> str:
    """One operator-facing sentence per ignored line, naming the model field behind it."""
    parts = []
    user_keys = set(unit.get("user_directives") or [])
    for finding in findings:
        key = finding["message"].split("'")[1] if "'" in finding["message"] else ""
        field = "directives" if key in user_keys else "unit"
        if finding["kind"] == "unknown-directive":
            fix = (f"remove {key or 'it'} or target a systemd that knows it"
                   if field == "directives" else "report this as a kernelfence bug")
        else:
            fix = "correct the value (see systemd.exec(5))" if field == "directives" else \
                "report this as a kernelfence bug"
        where = posixpath.basename(finding["file"])
        verb = "warns about" if finding["kind"] == "unsafe-user" else "ignores"
        parts.append(f"kernelfence_components[{unit.get('component', unit['name'])}].{field}: "
                     f"systemd {version} on this host {verb} {where}:{finding['line']} "
                     f"({finding['message']}). Fix: {fix}")
    return " | ".join(parts)


def stage_units(units: list[dict], stage: str, run: Runner) -> dict[str, str]:
    """Write every unit into `stage`; return unit name -> the path to verify and score."""
    paths = {}
    for unit in units:
        name = unit["name"]
        target = os.path.join(stage, name)
        if unit.get("dropin"):
            rc, fragment, err = run(["systemctl", "show", "-P", "FragmentPath", name])
            fragment = fragment.strip()
            if rc != 0 or not fragment or not os.path.isfile(fragment):
                raise UnitInstallError(
                    f"kernelfence_components[{unit.get('component', name)}].unit: {name} is not "
                    f"a unit this host has ({err.strip() or 'no unit file'}). Fix: install the "
                    "unit first, or remove `unit` to let kernelfence write a full unit")
            shutil.copyfile(fragment, target)
            dropins = os.path.join(stage, f"{name}.d")
            os.makedirs(dropins, exist_ok=True)
            # The host's other drop-ins take part, as they will once ours is installed.
            for base in DROPIN_DIRS:
                existing = os.path.join(base, f"{name}.d")
                if not os.path.isdir(existing):
                    continue
                for conf in sorted(os.listdir(existing)):
                    if conf.endswith(".conf") and conf != unit["dropin_name"]:
                        shutil.copyfile(os.path.join(existing, conf), os.path.join(dropins, conf))
            with open(os.path.join(dropins, unit["dropin_name"]), "w", encoding="utf-8") as fh:
                fh.write(unit["content"])
        else:
            with open(target, "w", encoding="utf-8") as fh:
                fh.write(unit["content"])
        paths[name] = target
    return paths


def _staged_files(path: str) -> list[tuple[str, str]]:
    files = []
    for name in unit_load_order(path):
        with open(name, encoding="utf-8") as fh:
            files.append((name, fh.read()))
    return files


def _describe_other(findings: list[dict], unit: dict) -> str:
    """Reasons not tied to an ignored line (missing command, unenforced directive)."""
    parts = []
    for finding in findings:
        where = posixpath.basename(finding["file"])
        if finding.get("line"):
            where += f":{finding['line']}"
        parts.append(f"kernelfence_components[{unit.get('component', unit['name'])}]: "
                     f"{where}: {finding['message']}")
    return " | ".join(parts)


def verify_and_score(units: list[dict], paths: dict[str, str], run: Runner,
                     version: str, features: str | None = None) -> dict[str, dict]:
    """Verify all staged units together and score the gated ones; raise on any problem.

    features: the target's `systemctl --version` output; directives its systemd accepts but
    cannot enforce (BPF ones without BPF_FRAMEWORK) are problems too. Every gated unit is
    scored even when another problem was found; the error carries the scores.
    """
    staged = list(paths.values())
    rc, out, err = run(["systemd-analyze", "verify", "--man=no", *staged])
    stage_dir = posixpath.dirname(staged[0]) if staged else ""
    findings = [f for f in parse_verify(err) if f["file"].startswith(stage_dir + "/")
                and f["kind"] != "warning"]
    files = {unit["name"]: _staged_files(paths[unit["name"]]) for unit in units}
    errors = verify_errors(err, {posixpath.basename(paths[name]): pairs
                                 for name, pairs in files.items()})
    target = systemd_features(features) if features is not None else None
    problems = []
    for unit in units:
        mine = [f for f in findings if f["file"] == paths[unit["name"]]
                or f["file"].startswith(paths[unit["name"]] + ".d/")]
        if mine:
            problems.append(describe_findings(mine, unit, version))
        other = [f for f in errors if f["file"] == paths[unit["name"]]
                 or f["file"].startswith(paths[unit["name"]] + ".d/")]
        if target is not None:
            other += unenforced_directives(files[unit["name"]], target)
        if other:
            problems.append(_describe_other(other, unit))
    if rc != 0 and not problems:
        problems.append(f"systemd-analyze verify failed for {', '.join(sorted(paths))}: "
                        f"{(err or out).strip()[-1500:]}. Fix: correct the component's command "
                        "or unit fields named above")
    scores = {}
    for unit in units:
        if unit.get("threshold") is None:
            continue
        argv = ["systemd-analyze", "security", "--no-pager", "--offline=yes", paths[unit["name"]]]
        rc1, text, err1 = run(argv)
        rc2, as_json, err2 = run([*argv[:3], "--json=short", *argv[3:]])
        if rc1 != 0 or rc2 != 0:
            problems.append(f"systemd-analyze security failed for {unit['name']}: "
                            f"{(err1 + err2).strip()[-1500:]}")
            continue
        score = parse_security(text, as_json)
        scores[unit["name"]] = score
        if score["exposure"] > float(unit["threshold"]):
            worst = ", ".join(f"{c['name']} ({c['exposure']})" for c in score["failing"][:8])
            problems.append(
                f"kernelfence_components[{unit.get('component', unit['name'])}]: exposure "
                f"{score['exposure']} of {unit['name']} is above its profile threshold "
                f"{unit['threshold']}; failing checks: {worst}. Fix: drop the relaxation "
                "(capabilities, syscalls, network, directives) that costs most, or choose "
                "another profile")
        elif problems:
            problems.append(f"{unit['name']}: exposure {score['exposure']} {score['band']} "
                            f"(threshold {unit['threshold']})")
    if problems:
        raise UnitInstallError(" | ".join(problems), scores)
    return scores


def installed_path(unit: dict, unit_dir: str) -> str:
    if unit.get("dropin"):
        return os.path.join(unit_dir, f"{unit['name']}.d", unit["dropin_name"])
    return os.path.join(unit_dir, unit["name"])


def read_text(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read()
    except FileNotFoundError:
        return None


# Files written but not yet loaded by systemd, one marker per unit, kept across runs: a
# daemon-reload that failed after the files were written is owed until one succeeds, even when
# the next run finds the files equal. Under /run because a reboot loads every unit file anew.
PENDING_DIR = "/run/kernelfence-pending/unit_install"
RELOAD_MARKER = "daemon-reload"


class ApplyFailed(Exception):
    """A write or the daemon-reload failed; `written` lists the paths this call changed."""

    def __init__(self, msg: str, written: list[str]) -> None:
        super().__init__(msg)
        self.written = written


def write_file(path: str, content: str | bytes, mode: int, uid: int, gid: int) -> None:
    """Write atomically (temp file in the same directory, then rename); bytes as they are
    (the compiled seccomp program), text as UTF-8."""
    directory = os.path.dirname(path)
    os.makedirs(directory, mode=0o755, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".kf-")
    try:
        if isinstance(content, bytes):
            with os.fdopen(fd, "wb") as fh:
                fh.write(content)
        else:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(content)
        os.chown(tmp, uid, gid)
        os.chmod(tmp, mode)
        os.rename(tmp, path)
    except OSError:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def pending(pending_dir: str) -> tuple[bool, list[str]]:
    """(a daemon-reload is owed, units whose files changed since they were last restarted)."""
    try:
        names = sorted(os.listdir(pending_dir))
    except FileNotFoundError:
        return False, []
    return RELOAD_MARKER in names, [n for n in names if n != RELOAD_MARKER]


def _mark(pending_dir: str, names: list[str]) -> None:
    os.makedirs(pending_dir, mode=0o700, exist_ok=True)
    for name in names:
        with open(os.path.join(pending_dir, name), "w", encoding="utf-8"):
            pass


def clear_units(pending_dir: str, names: list[str]) -> None:
    """Forget the units whose restart this run has handed on (restart_needed)."""
    for name in names:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(pending_dir, name))


def write_and_reload(writes: list[tuple[str, str | bytes, int, int, int]], units: list[str],
                     pending_dir: str, run: Runner, removals: list[str] | tuple = ()) -> None:
    """Write every file and remove every file of `removals`, then daemon-reload; also reload
    when an earlier run owes one.

    The markers are written before the first file and the reload marker is removed only after
    a successful reload, so a failure anywhere in between is retried by the next run.
    Raises ApplyFailed naming what failed and the paths already written.
    """
    owed, _units = pending(pending_dir)
    if not writes and not removals and not owed:
        return
    if writes or removals:
        _mark(pending_dir, [*units, RELOAD_MARKER])
    written: list[str] = []
    for path, content, mode, uid, gid in writes:
        try:
            write_file(path, content, mode, uid, gid)
        except OSError as exc:
            raise ApplyFailed(f"cannot write {path}: {exc}", written) from exc
        written.append(path)
    for path in removals:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise ApplyFailed(f"cannot remove {path}: {exc}", written) from exc
        written.append(path)
    rc, _out, err = run(["systemctl", "daemon-reload"])
    if rc != 0:
        raise ApplyFailed(
            f"systemctl daemon-reload failed: {err.strip() or f'exit status {rc}'}. The files "
            f"are written; the next run retries the reload (marker {pending_dir}/"
            f"{RELOAD_MARKER})", written)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(os.path.join(pending_dir, RELOAD_MARKER))
