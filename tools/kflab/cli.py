"""`./kf`: the lab VM, the whole test suite, and the VM primitives molecule calls."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from . import setup, vm
from .common import CACHE, REPO, HarnessError, log, run
from .image import DISTROS, ensure_image

LAB_INSTANCE = "lab"
# Scenario -> guest image. `fleet` boots three Debian 12 VMs (rolling rollout across hosts).
SCENARIOS = {"default": "debian12", "debian13": "debian13", "fleet": "debian12"}


def _tool(name: str) -> str:
    return str(setup.venv_dir() / "bin" / name)


def _prepare(with_tools: bool) -> threading.Thread | None:
    setup.ensure_apt()
    setup.ensure_venv()
    setup.ensure_ansible_test_bootstrap()
    if not with_tools:
        return None
    errors: list[BaseException] = []

    def build() -> None:
        try:
            setup.ensure_tools()
        except (HarnessError, OSError, subprocess.SubprocessError) as exc:
            errors.append(exc)  # re-raised in the main thread by _join_tools

    thread = threading.Thread(target=build, name="tools", daemon=True)
    thread.errors = errors  # type: ignore[attr-defined]
    thread.start()
    return thread


def _join_tools(thread: threading.Thread | None) -> None:
    if thread is None:
        return
    thread.join()
    if thread.errors:  # type: ignore[attr-defined]
        raise thread.errors[0]  # type: ignore[attr-defined]


def _lab_inventory(info: dict) -> Path:
    inv_dir = CACHE / "lab"
    inv_dir.mkdir(parents=True, exist_ok=True)
    inventory = {
        "all": {"children": {"kernelfence": {"hosts": {LAB_INSTANCE: {
            "ansible_host": info["address"], "ansible_port": info["port"],
            "ansible_user": info["user"],
            "ansible_ssh_private_key_file": info["identity_file"],
            "ansible_ssh_common_args": " ".join(vm.SSH_OPTS),
            "ansible_python_interpreter": "/usr/bin/python3",
            # The cargo-audit release signed by the test setup (verified_binary installs it).
            "kernelfence_release_dir": str(setup.RELEASE),
        }}}}},
    }
    path = inv_dir / "hosts.json"
    path.write_text(json.dumps(inventory, indent=2))
    return path


def cmd_lab(args: argparse.Namespace) -> int:
    # cargo-audit (the executor's demo job) is one of the pinned tools.
    _join_tools(_prepare(with_tools=True))
    info = vm.up(LAB_INSTANCE, args.distro)
    inventory = _lab_inventory(info)
    env = setup.tool_env()
    group_vars = REPO / "inventory" / "example" / "group_vars"
    # The lab host gets the example inventory's group_vars: the three reference components.
    lab_vars = CACHE / "lab" / "group_vars"
    if lab_vars.is_symlink() or lab_vars.exists():
        lab_vars.unlink()
    lab_vars.symlink_to(group_vars)
    log("installing the reference components (demo/prepare.yml)")
    run([_tool("ansible-playbook"), "-i", str(inventory), str(REPO / "demo" / "prepare.yml")],
        env=env, cwd=REPO, timeout=3600)
    log("running site.yml against the lab VM")
    run([_tool("ansible-playbook"), "-i", str(inventory), str(REPO / "site.yml")],
        env=env, cwd=REPO, timeout=3600)
    audit = REPO / "playbooks" / "audit.yml"
    if audit.exists():
        run([_tool("ansible-playbook"), "-i", str(inventory), str(audit)], env=env, cwd=REPO,
            timeout=3600)
    login = shlex.join(vm.ssh_argv(info))
    if audit.exists():
        print(f"\naudit report: {REPO / 'playbooks' / 'audit' / 'report.html'}")
    print(f"\nLab VM '{LAB_INSTANCE}' ({info['distro']}, systemd {info['systemd']}) is up.\n"
          f"  log in:    {login}\n"
          f"  inventory: {inventory}\n"
          f"  re-run:    ANSIBLE_CONFIG={REPO / 'ansible.cfg'} {_tool('ansible-playbook')} "
          f"-i {inventory} {REPO / 'site.yml'}\n"
          f"  tear down: ./kf lab-down\n")
    return 0


def cmd_lab_down(args: argparse.Namespace) -> int:
    del args
    removed = vm.down(LAB_INSTANCE)
    print("lab VM removed" if removed else "no lab VM was running")
    return 0


def cmd_setup(args: argparse.Namespace) -> int:
    _join_tools(_prepare(with_tools=not args.no_tools))
    for distro in args.images:
        ensure_image(distro)
    return 0


def cmd_vm(args: argparse.Namespace) -> int:
    if args.action == "up":
        info = vm.up(args.name, args.distro, memory_mb=args.memory)
        print(json.dumps(info))
    elif args.action == "down":
        names = vm.down_all() if args.name == "ALL" else [args.name] * vm.down(args.name)
        print(json.dumps({"removed": names}))
    else:
        print(json.dumps(vm.status(), indent=2))
    return 0


class Stages:
    """Runs named stages, keeps going after a failure, and prints one closing count."""

    def __init__(self) -> None:
        self.results: list[tuple[str, bool, float]] = []

    def run(self, name: str, argv: list[str], *, env: dict[str, str], cwd: Path = REPO,
            timeout: float = 3600) -> bool:
        log(f"stage {name}: {shlex.join(argv)}")
        began = time.monotonic()
        try:
            proc = subprocess.run(argv, env=env, cwd=cwd, timeout=timeout, check=False)
            ok = proc.returncode == 0
        except subprocess.TimeoutExpired:
            log(f"stage {name} timed out after {timeout:.0f}s")
            ok = False
        self.record(name, ok, time.monotonic() - began)
        return ok

    def record(self, name: str, ok: bool, seconds: float) -> None:
        self.results.append((name, ok, seconds))
        log(f"stage {name}: {'PASSED' if ok else 'FAILED'} in {seconds:.0f}s")

    def report(self) -> int:
        print("\nkf test stages:")
        for name, ok, seconds in self.results:
            print(f"  {'PASS' if ok else 'FAIL'}  {seconds:7.0f}s  {name}")
        passed = sum(1 for result in self.results if result[1])
        failed = len(self.results) - passed
        print(f"stages: {passed} passed, {failed} failed")
        return 0 if failed == 0 and passed > 0 else 1


def _not_shipped(rel: str) -> bool:
    if rel.startswith("tests/unit/"):
        return False
    first = rel.split("/", 1)[0]
    ignored = yaml_build_ignore()
    return first in ignored or rel in ignored


def yaml_build_ignore() -> set[str]:
    """Top-level names in galaxy.yml's build_ignore (a flat list; read without PyYAML)."""
    names, inside = set(), False
    for line in (REPO / "galaxy.yml").read_text().splitlines():
        if line.startswith("build_ignore:"):
            inside = True
        elif inside and line.startswith("  - "):
            names.add(line[4:].strip().strip('"'))
        elif inside and line and not line.startswith(" "):
            inside = False
    return names


def _sanity_tree(env: dict[str, str]) -> Path:
    """The files the collection ships, plus tests/unit, at ansible_collections/<ns>/<name>.

    ansible-test checks a collection; the harness (tools/, kf) and the molecule/testinfra
    content are build_ignore'd, never shipped, and linted by ruff and ansible-lint instead.
    """
    top = Path(tempfile.mkdtemp(prefix="kf-sanity-"))
    dest = top / "ansible_collections" / "kernelfence" / "isolation"
    files = run(["git", "ls-files", "-co", "--exclude-standard"], capture=True, cwd=REPO,
                env=env).stdout.splitlines()
    for rel in files:
        src = REPO / rel
        if src.is_symlink() or not src.is_file() or _not_shipped(rel):
            continue
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dest / rel)
    run(["git", "init", "-q"], cwd=dest, env=env)
    run(["git", "add", "-A"], cwd=dest, env=env)
    return top


# Seconds one `molecule test` stage may take. The core limit keeps a slow CI machine (TCG guests
# with CPU steal; docs/development.md) inside CI's 90 minutes with the stages before it.
SCENARIO_TIMEOUT = {"core": 4200, "full": 7200}


def cmd_test(args: argparse.Namespace) -> int:
    tools = _prepare(with_tools=True)
    env = setup.tool_env()
    stages = Stages()
    # CI runs Debian 12 only: the scenarios one after the other do not fit its 90 minutes
    # (docs/development.md, "The two commands"); --full adds Debian 13 and the three-VM fleet.
    wanted = args.scenarios or (list(SCENARIOS) if args.full else ["default"])
    # Images build while the tools compile: one waits on the network and disk, the other on CPU.
    for distro in dict.fromkeys(SCENARIOS[scenario] for scenario in wanted):
        began = time.monotonic()
        try:
            ensure_image(distro)
            stages.record(f"image {distro}", True, time.monotonic() - began)
        except HarnessError as exc:
            log(str(exc))
            stages.record(f"image {distro}", False, time.monotonic() - began)
    if not args.skip_static:
        stages.run("ruff", [_tool("ruff"), "check", "."], env=env)
        stages.run("ansible-lint (production)",
                   [_tool("ansible-lint"), "--offline", "--profile", "production"], env=env)
        sanity = _sanity_tree(env)
        try:
            stages.run("ansible-test sanity",
                       [_tool("ansible-test"), "sanity", "--python", "3.11", "--color", "no"],
                       env=env, cwd=sanity / "ansible_collections/kernelfence/isolation")
        finally:
            shutil.rmtree(sanity, ignore_errors=True)
        stages.run("galaxy build+install", [sys.executable, "-m", "tools.kflab.galaxy"], env=env)
    began = time.monotonic()
    try:
        _join_tools(tools)
        stages.record("pinned tools (cosign, syft, cargo-audit)", True, time.monotonic() - began)
    except HarnessError as exc:
        log(str(exc))
        stages.record("pinned tools (cosign, syft, cargo-audit)", False,
                      time.monotonic() - began)
    # After the tools: the verifier's unit tests run the real cosign and syft.
    stages.run("pytest tests/unit", [_tool("pytest"), "-q", "tests/unit"], env=env)
    stages.run("pytest tests/harness (real qemu cleanup)", [_tool("pytest"), "-q", "tests/harness"],
               env=env)
    # The VM checks' tier (tests/vm/conftest.py): CI runs the core set in its time budget.
    suite = "full" if args.full else "core"
    env = {**env, "KF_VM_SUITE": suite}
    for scenario in wanted:
        if not stages.run(f"molecule test -s {scenario} ({suite} VM checks)",
                          [_tool("molecule"), "test", "-s", scenario], env=env,
                          timeout=SCENARIO_TIMEOUT[suite]):
            # molecule destroys its VMs after a failed step, but not when the time-out above
            # killed it: never leave a scenario's VMs running behind a failed stage.
            try:
                subprocess.run([_tool("molecule"), "destroy", "-s", scenario], env=env,
                               cwd=REPO, timeout=600, check=False)
            except subprocess.TimeoutExpired:
                log(f"molecule destroy -s {scenario} timed out; `./kf vm down` removes its VMs")
    return stages.report()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kf", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    lab = sub.add_parser("lab", help="boot the lab VM, deploy site.yml, show the audit")
    lab.add_argument("--distro", choices=sorted(DISTROS), default="debian12")
    lab.set_defaults(func=cmd_lab)
    sub.add_parser("lab-down", help="destroy the lab VM").set_defaults(func=cmd_lab_down)
    test = sub.add_parser("test", help="static gates, unit tests and the Debian 12 scenario's "
                                       "core VM checks (--full: every scenario and check)")
    test.add_argument("--scenario", dest="scenarios", action="append",
                      choices=sorted(SCENARIOS), help="run only this scenario (repeatable)")
    test.add_argument("--full", action="store_true",
                      help="every scenario (Debian 12, Debian 13, the three-VM fleet) and every "
                           "VM check; without it, Debian 12 with the core VM checks")
    test.add_argument("--skip-static", action="store_true", help="development shortcut")
    test.set_defaults(func=cmd_test)
    st = sub.add_parser("setup", help="install packages, the virtualenv and pinned tools")
    st.add_argument("--no-tools", action="store_true")
    st.add_argument("--image", dest="images", action="append", default=[],
                    choices=sorted(DISTROS))
    st.set_defaults(func=cmd_setup)
    vmp = sub.add_parser("vm", help="VM primitives used by molecule create/destroy")
    vmp.add_argument("action", choices=["up", "down", "status"])
    vmp.add_argument("--name", default="ALL")
    vmp.add_argument("--distro", choices=sorted(DISTROS), default="debian12")
    vmp.add_argument("--memory", type=int, default=2048)
    vmp.set_defaults(func=cmd_vm)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except HarnessError as exc:
        print(f"kf: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("kf: interrupted; `./kf vm down` removes any VM left behind", file=sys.stderr)
        return 130


if __name__ == "__main__":
    os.chdir(REPO)
    sys.exit(main())
