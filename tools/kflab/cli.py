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
import time
from pathlib import Path

from . import setup, vm
from .common import CACHE, REPO, HarnessError, Progress, StateError, Step, log, run
from .image import DISTROS, check_can_build, ensure_image

LAB_INSTANCE = "lab"
# Scenario -> guest image. `fleet` boots three Debian 12 VMs (rolling rollout across hosts).
SCENARIOS = {"default": "debian12", "debian13": "debian13", "fleet": "debian12"}


def _tool(name: str) -> str:
    return str(setup.venv_dir() / "bin" / name)


def _prepare(with_tools: bool, progress: Progress) -> Step | None:
    """Packages and the virtualenv now; every pinned tool in the background (tests, setup)."""
    setup.ensure_apt()
    with progress.step("controller virtualenv"):
        setup.ensure_venv()
    setup.ensure_ansible_test_bootstrap()
    if not with_tools:
        return None
    return progress.background("pinned tools (cosign, syft, cargo-audit)", setup.ensure_tools)


def _join_tools(tools: Step | None) -> None:
    """Wait for the tools, then sign the release and give the tests cosign's key format."""
    if tools is None:
        return
    tools.join()
    setup.ensure_signed_release()
    setup.ensure_cosign_key()


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
    # The lab host gets the example inventory's group_vars: the three reference components.
    lab_vars = inv_dir / "group_vars"
    if lab_vars.is_symlink():
        lab_vars.unlink()
    lab_vars.symlink_to(REPO / "inventory" / "example" / "group_vars")
    return path


def lab_preflight(distro: str) -> None:
    """Everything `./kf lab` can find in its way, checked before any long step starts."""
    found = vm.inspect(LAB_INSTANCE)
    if found.running:
        login = shlex.join(vm.ssh_argv(found.info or {}))
        raise StateError(f"a lab VM is already up: {found.describe()}; log in with: {login}",
                         "./kf lab-down   # then ./kf lab builds a new one")
    if found.pids or found.exists:
        raise StateError(found.describe(), "./kf lab-down")
    lab_vars = CACHE / "lab" / "group_vars"
    if lab_vars.exists() and not lab_vars.is_symlink():
        raise StateError(f"{lab_vars} is a real directory, where ./kf lab keeps a link to "
                         "inventory/example/group_vars", f"rm -r {lab_vars}")
    check_can_build(distro)
    setup.ensure_apt()
    setup.check_build_tools(setup.install_tools_commands(["cargo-audit"]))


def _guest(progress: Progress, distro: str) -> dict:
    with progress.step(f"guest image {distro}"):
        ensure_image(distro)
    with progress.step("boot the lab VM"):
        return vm.up(LAB_INSTANCE, distro, fix="./kf lab-down")


def _playbook(progress: Progress, label: str, inventory: Path, book: Path,
              env: dict[str, str]) -> None:
    with progress.step(label):
        run([_tool("ansible-playbook"), "-i", str(inventory), str(book)], env=env, cwd=REPO,
            timeout=3600)


def cmd_lab(args: argparse.Namespace) -> int:
    """Only what the lab needs, overlapped: the virtualenv, cargo-audit (the lab's payload)
    and the guest image + boot start together; the demo components go in while cargo-audit
    still compiles; the release is signed in Python (no cosign/syft build) right before
    site.yml needs it."""
    lab_preflight(args.distro)
    with Progress() as progress:
        try:
            venv = progress.background("controller virtualenv", setup.ensure_venv)
            tools = progress.background("build cargo-audit (the lab's payload)",
                                        lambda: setup.ensure_tools(["cargo-audit"]))
            guest = progress.background("guest", lambda: _guest(progress, args.distro),
                                        track=False)
            venv.join()
            info: dict = guest.join()  # type: ignore[assignment]
            inventory = _lab_inventory(info)
            env = setup.tool_env()
            _playbook(progress, "demo components (demo/prepare.yml)", inventory,
                      REPO / "demo" / "prepare.yml", env)
            tools.join()
            with progress.step("sign the cargo-audit release (cryptography, cyclonedx)"):
                setup.ensure_signed_release()
            _playbook(progress, "site.yml", inventory, REPO / "site.yml", env)
            audit = REPO / "playbooks" / "audit.yml"
            if audit.exists():
                _playbook(progress, "audit (playbooks/audit.yml)", inventory, audit, env)
        except BaseException:
            setup.stop_builds()
            log(progress.summary())
            left = vm.inspect(LAB_INSTANCE)
            if left.running:
                log("the lab VM stays up for a look; `./kf lab-down` removes it")
            elif left.exists or left.pids:
                log(f"left behind: {left.describe()}; `./kf lab-down` removes it")
            raise
    print(progress.summary())
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
    for distro in args.images:
        check_can_build(distro)
    with Progress() as progress:
        tools = _prepare(with_tools=not args.no_tools, progress=progress)
        for distro in args.images:
            with progress.step(f"guest image {distro}"):
                ensure_image(distro)
        _join_tools(tools)
    print(progress.summary())
    return 0


def release_preflight(for_scenario: bool) -> None:
    """What the VM scenarios need made first; each missing piece names `./kf setup`."""
    if not (setup.venv_dir() / ".complete").exists():
        raise StateError(f"the controller virtualenv is not set up ({setup.venv_dir()}); the "
                         "release is signed with its cryptography and cyclonedx", "./kf setup")
    if not setup.tool_ready("cargo-audit"):
        raise StateError("the scenarios install the signed cargo-audit release, and "
                         f"cargo-audit is not built yet ({setup.tool_path('cargo-audit')})",
                         "./kf setup")
    if for_scenario and not setup.tool_ready("cosign"):
        raise StateError("the VM checks re-sign artifacts with the real cosign, which is not "
                         f"built yet ({setup.tool_path('cosign')})", "./kf setup")


def cmd_release(args: argparse.Namespace) -> int:
    release_preflight(args.for_scenario)
    setup.ensure_signed_release()
    setup.ensure_cosign_key()
    print(setup.RELEASE)
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

    def __init__(self, progress: Progress | None = None) -> None:
        self.results: list[tuple[str, bool, float]] = []
        self.progress = progress or Progress(interval=0)

    def run(self, name: str, argv: list[str], *, env: dict[str, str], cwd: Path = REPO,
            timeout: float = 3600) -> bool:
        log(f"stage {name}: {shlex.join(argv)}")
        began = time.monotonic()
        try:
            with self.progress.ticking(f"stage {name}"):
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
    # CI runs Debian 12 only: the scenarios one after the other do not fit its 90 minutes
    # (docs/development.md, "The two commands"); --full adds Debian 13 and the three-VM fleet.
    wanted = args.scenarios or (list(SCENARIOS) if args.full else ["default"])
    for distro in dict.fromkeys(SCENARIOS[scenario] for scenario in wanted):
        check_can_build(distro)
    with Progress() as progress:
        return _test(args, wanted, _prepare(with_tools=True, progress=progress), progress)


def _test(args: argparse.Namespace, wanted: list[str], tools: Step | None,
          progress: Progress) -> int:
    env = setup.tool_env()
    stages = Stages(progress)
    # Images build while the tools compile: one waits on the network and disk, the other on CPU.
    for distro in dict.fromkeys(SCENARIOS[scenario] for scenario in wanted):
        began = time.monotonic()
        try:
            with progress.ticking(f"image {distro}"):
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
    except (HarnessError, OSError) as exc:
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
    rel = sub.add_parser("release", help="sign the cargo-audit release the lab and the "
                                         "scenarios install (molecule's create runs it first)")
    rel.add_argument("--for-scenario", action="store_true",
                     help="also require what the VM checks use (cosign)")
    rel.set_defaults(func=cmd_release)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except StateError as exc:
        print(f"kf: {exc.found}\n  fix: {exc.fix}", file=sys.stderr)
        return 1
    except HarnessError as exc:
        print(f"kf: error: {exc}", file=sys.stderr)
        return 2
    except PermissionError as exc:
        print(f"kf: error: permission denied: {exc.filename or exc}\n"
              f"  fix: run as the user that owns it (or root), or set KF_CACHE to a directory "
              f"you own (now {CACHE})", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"kf: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("kf: interrupted; `./kf vm status` shows any VM left behind, `./kf vm down` "
              "removes them", file=sys.stderr)
        return 130
    finally:
        setup.stop_builds()


if __name__ == "__main__":
    os.chdir(REPO)
    sys.exit(main())
