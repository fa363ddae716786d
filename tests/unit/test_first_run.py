"""The newcomer's first hour (issue 21): `./kf` meets state it did not expect, `./kf lab`'s plan,
the release signed in Python, molecule's first step, and the benchmark's independent parts.

The CLI cases run the real `./kf` in a subprocess with KF_CACHE in a temporary directory, so
nothing here reads or writes the shared cache. A "qemu left behind" is a real process of this
test whose command line looks like the harness's qemu (the name and the instance folder, which
is how the harness finds its qemu); the test ends every process it starts, and checks that
`./kf` never ends a process that is not such a qemu (a plain `sleep` behind a stale pid file).
No case boots a VM or builds an image: each stops at the state check before those steps, and
KF_DEBIAN_MIRROR points at a closed loopback port so that even a regression could not fetch.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tools.kflab import cli, common, image, setup, vm

REPO = Path(__file__).resolve().parents[2]
KF = [sys.executable, str(REPO / "kf")]
LAB_INFO = {"instance": "lab", "address": "127.0.0.1", "port": 40022, "user": "root",
            "identity_file": "/nonexistent/id_ed25519", "distro": "debian12", "systemd": 252,
            "pid": 0, "accel": "tcg,thread=multi"}


# Closed loopback ports for the Debian mirror and PyPI: no case may fetch anything, even if a
# regression let it past the state checks into an image build or a virtualenv install.
OFFLINE = {"KF_DEBIAN_MIRROR": "http://127.0.0.1:9/debian",
           "PIP_INDEX_URL": "http://127.0.0.1:9/simple", "PIP_RETRIES": "0", "PIP_TIMEOUT": "2"}


def kf(cache: Path, *args: str, env_extra: dict | None = None, python: str | None = None,
       timeout: float = 60) -> subprocess.CompletedProcess:
    env = dict(os.environ, KF_CACHE=str(cache), **OFFLINE)
    env.pop("KF_BOOT_TIMEOUT", None)
    env.update(env_extra or {})
    argv = [python or sys.executable, str(REPO / "kf"), *args]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout,
                          cwd=REPO, check=False)


def no_traceback(proc: subprocess.CompletedProcess) -> None:
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr


@pytest.fixture
def procs():
    """Processes this test starts; each is ended (by its own Popen) when the test ends."""
    started: list[subprocess.Popen] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)


def fake_qemu(procs: list, instance: Path) -> subprocess.Popen:
    """A process whose command line is the harness's qemu for this instance (name, pid file)."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)",
                             "qemu-system-x86_64", "-name", f"kf-{instance.name}",
                             "-pidfile", str(instance / "qemu.pid")])
    procs.append(proc)
    deadline = time.monotonic() + 10
    needle = str(instance).encode()
    while needle not in Path(f"/proc/{proc.pid}/cmdline").read_bytes():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    return proc


def lab_dir(cache: Path) -> Path:
    path = cache / "instances" / "lab"
    path.mkdir(parents=True)
    return path


def only_instances(cache: Path) -> set[str]:
    """What the command left in the cache: a state check must create nothing (no venv, image)."""
    return {p.name for p in cache.iterdir()}


# --- item 2: state a user can cause -----------------------------------------------------------

def test_lab_while_a_lab_vm_is_up_says_how_to_reach_it_and_tear_it_down(tmp_path, procs):
    path = lab_dir(tmp_path)
    qemu = fake_qemu(procs, path)
    (path / "instance.json").write_text(json.dumps(LAB_INFO))
    proc = kf(tmp_path, "lab")
    no_traceback(proc)
    assert proc.returncode == 1
    assert "a lab VM is already up" in proc.stderr and f"qemu pid {qemu.pid}" in proc.stderr
    assert "ssh " in proc.stderr and "-p 40022 root@127.0.0.1" in proc.stderr
    assert "fix: ./kf lab-down" in proc.stderr
    assert qemu.poll() is None, "kf ended the running lab VM"
    assert only_instances(tmp_path) == {"instances"}


def test_lab_with_a_stale_instance_folder_names_it_and_lab_down_clears_it(tmp_path):
    path = lab_dir(tmp_path)
    (path / "console.log").write_text("[    0.000000] Linux version 6.1.0\n")
    (path / "overlay.qcow2").write_bytes(b"QFI\xfb")
    proc = kf(tmp_path, "lab")
    no_traceback(proc)
    assert proc.returncode == 1
    assert f"a stale folder of instance 'lab' at {path}" in proc.stderr
    assert "fix: ./kf lab-down" in proc.stderr
    assert (path / "overlay.qcow2").exists(), "a refused command must change nothing"
    down = kf(tmp_path, "lab-down")
    assert down.returncode == 0 and "lab VM removed" in down.stdout
    assert not path.exists()


def test_a_qemu_left_by_a_killed_run_is_named_by_pid_and_lab_down_stops_it(tmp_path, procs):
    path = lab_dir(tmp_path)
    qemu = fake_qemu(procs, path)  # no instance.json: the run died during the boot
    proc = kf(tmp_path, "lab")
    no_traceback(proc)
    assert proc.returncode == 1
    assert f"a qemu (pid {qemu.pid}) is running for instance 'lab'" in proc.stderr
    assert "fix: ./kf lab-down" in proc.stderr
    assert qemu.poll() is None
    down = kf(tmp_path, "lab-down")
    assert down.returncode == 0
    assert qemu.wait(timeout=20) is not None and not path.exists()


def test_a_stale_pid_file_never_makes_kf_end_another_process(tmp_path, procs):
    path = lab_dir(tmp_path)
    other = subprocess.Popen(["sleep", "120"])  # the pid now belongs to something else
    procs.append(other)
    (path / "qemu.pid").write_text(f"{other.pid}\n")
    (path / "instance.json").write_text(json.dumps({**LAB_INFO, "pid": other.pid}))
    proc = kf(tmp_path, "lab")
    no_traceback(proc)
    assert proc.returncode == 1 and "a stale folder of instance 'lab'" in proc.stderr
    assert kf(tmp_path, "lab-down").returncode == 0
    assert not path.exists()
    assert other.poll() is None, "kf ended a process that is not its qemu"


def test_an_unreadable_state_file_is_reported_not_a_traceback(tmp_path, procs):
    path = lab_dir(tmp_path)
    fake_qemu(procs, path)
    (path / "instance.json").write_text('{"instance": "lab", "port": 400')  # cut short
    proc = kf(tmp_path, "lab")
    no_traceback(proc)
    assert proc.returncode == 1 and "instance.json unreadable" in proc.stderr
    status = kf(tmp_path, "vm", "status")
    no_traceback(status)
    assert status.returncode == 0
    row = json.loads(status.stdout)[0]
    assert row["running"] is True and "instance.json unreadable" in row["problem"]


def test_vm_up_of_another_distro_refuses_instead_of_killing_the_running_vm(tmp_path, procs):
    path = lab_dir(tmp_path)
    qemu = fake_qemu(procs, path)
    (path / "instance.json").write_text(json.dumps(LAB_INFO))
    proc = kf(tmp_path, "vm", "up", "--name", "lab", "--distro", "debian13")
    no_traceback(proc)
    assert proc.returncode == 1
    assert "is up (debian12" in proc.stderr and "not debian13" in proc.stderr
    assert "fix: ./kf vm down --name lab" in proc.stderr
    assert qemu.poll() is None
    # The same distro is reused (molecule's create after a converge), as before.
    same = kf(tmp_path, "vm", "up", "--name", "lab", "--distro", "debian12")
    assert same.returncode == 0 and json.loads(same.stdout)["port"] == 40022


def test_a_bad_boot_timeout_stops_before_any_image_is_built(tmp_path):
    proc = kf(tmp_path, "vm", "up", "--name", "x", env_extra={"KF_BOOT_TIMEOUT": "ten"})
    no_traceback(proc)
    assert proc.returncode == 2 and "KF_BOOT_TIMEOUT must be a number" in proc.stderr
    assert not (tmp_path / "images").exists() and not (tmp_path / "instances").exists()


def test_a_cache_path_that_is_a_file_is_an_error_message(tmp_path):
    cache = tmp_path / "cache"
    cache.write_text("not a directory\n")
    for args in (["vm", "up", "--name", "x"], ["lab"]):
        proc = kf(cache, *args)
        no_traceback(proc)
        assert proc.returncode != 0 and str(cache) in proc.stderr, (args, proc.stderr)


def test_lab_group_vars_made_a_directory_names_it_and_the_fix(tmp_path):
    lab_vars = tmp_path / "lab" / "group_vars"
    lab_vars.mkdir(parents=True)
    proc = kf(tmp_path, "lab")
    no_traceback(proc)
    assert proc.returncode == 1 and f"fix: rm -r {lab_vars}" in proc.stderr


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"),
                    reason="drops to nobody with setpriv, which needs root")
def test_lab_without_root_says_the_image_needs_root_before_any_step():
    # Not under tmp_path: pytest's base directory is 0700, closed to the unprivileged user.
    top = Path(tempfile.mkdtemp(prefix="kf-nonroot-"))
    top.chmod(0o755)
    cache = top / "cache"
    cache.mkdir()
    os.chown(cache, 65534, 65534)
    try:
        _lab_as_nobody(cache)
    finally:
        shutil.rmtree(top)


def _lab_as_nobody(cache: Path) -> None:
    proc = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "/usr/bin/python3",
         str(REPO / "kf"), "lab"], capture_output=True, text=True, timeout=60, check=False,
        env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "KF_CACHE": str(cache),
             "HOME": str(cache), **OFFLINE})
    no_traceback(proc)
    assert proc.returncode == 1
    assert "building it needs root" in proc.stderr and "fix: sudo ./kf lab" in proc.stderr
    assert not (cache / "images").exists() and not (cache / "venv").exists()


def test_missing_cargo_is_named_with_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # no cargo, no go
    # As on a fresh machine, whatever this one has built already.
    monkeypatch.setattr(setup, "tool_ready", lambda name: False)
    with pytest.raises(common.HarnessError, match=r"cargo \(Rust >= 1\.88\).*not on PATH.*rustup"):
        setup.check_build_tools(setup.install_tools_commands(["cargo-audit"]))
    with pytest.raises(common.HarnessError, match=r"Go >= 1\.26.*not on PATH"):
        setup.check_build_tools(setup.install_tools_commands(["cosign"]))


# --- item 1: the lab's plan and its progress lines -------------------------------------------

def test_progress_ticks_with_the_step_and_its_elapsed_time(capsys):
    with common.Progress(interval=0.2) as progress:
        step = progress.background(
            "compile", lambda: subprocess.run(["sleep", "0.9"], check=True))
        step.join()
    err = capsys.readouterr().err
    ticks = [line for line in err.splitlines() if "running: compile (" in line]
    assert len(ticks) >= 2, err
    assert "since start" in ticks[0]
    assert "step compile: done in 0s" in err or "step compile: done in 1s" in err
    assert "compile" in progress.summary() and "total" in progress.summary()


def test_kf_test_stages_tick_while_they_run(capsys):
    with common.Progress(interval=0.2) as progress:
        stages = cli.Stages(progress)
        assert stages.run("nap", ["sleep", "0.7"], env=dict(os.environ))
    err = capsys.readouterr().err
    assert any("running: stage nap (" in line for line in err.splitlines()), err
    assert "stage nap: PASSED" in err


def test_a_failed_background_step_raises_in_the_caller_and_is_marked(capsys):
    def broken():
        raise common.HarnessError("cargo exploded")

    with common.Progress(interval=0) as progress:
        step = progress.background("build", broken)
        with pytest.raises(common.HarnessError, match="cargo exploded"):
            step.join()
    assert "step build: FAILED" in capsys.readouterr().err
    assert "FAIL" in progress.summary()


def test_lab_builds_only_cargo_audit_and_overlaps_it_with_the_guest(monkeypatch, tmp_path):
    """The order of ./kf lab's steps. The steps themselves (a compile, an image build, a
    boot, playbooks) are stand-ins that sleep and record when they ran: the real ones need a
    VM (tests/vm and the lead's fresh-machine measurement cover them)."""
    events: list[tuple[str, str, float]] = []
    began = time.monotonic()

    def record(name, seconds=0.0, result=None):
        def run_step(*_args, **_kwargs):
            events.append((name, "start", time.monotonic() - began))
            time.sleep(seconds)
            events.append((name, "end", time.monotonic() - began))
            return result
        return run_step

    tools_asked = []
    monkeypatch.setattr(cli, "CACHE", tmp_path)
    monkeypatch.setattr(cli, "lab_preflight", lambda distro: None)
    monkeypatch.setattr(setup, "ensure_venv", record("venv", 0.2))
    monkeypatch.setattr(setup, "ensure_tools",
                        lambda names=None: (tools_asked.append(names), record("tools", 1.5)()))
    monkeypatch.setattr(cli, "ensure_image", record("image", 0.4))
    monkeypatch.setattr(vm, "up", record("boot", 0.4, dict(LAB_INFO)))
    monkeypatch.setattr(setup, "ensure_signed_release", record("sign"))
    monkeypatch.setattr(cli, "run", lambda argv, **kw: record(Path(argv[-1]).name, 0.1)())
    monkeypatch.setattr(vm, "inspect", lambda name: vm.Found(name, tmp_path, False, [], None,
                                                             None))
    monkeypatch.setenv("KF_TICK", "0")
    assert cli.main(["lab"]) == 0
    at = {(name, edge): t for name, edge, t in events}
    assert tools_asked == [["cargo-audit"]], "the lab builds cargo-audit only"
    assert at[("image", "start")] < at[("tools", "end")], "the image waited for the tools"
    assert at[("boot", "end")] < at[("tools", "end")]
    assert at[("prepare.yml", "start")] < at[("tools", "end")], "demo waited for the tools"
    assert at[("tools", "end")] <= at[("sign", "start")] < at[("site.yml", "start")]
    assert at[("site.yml", "end")] < 1.5 + 0.2 + 0.4 + 0.4 + 0.1 * 3, "steps ran one by one"


# --- item 1: the release signed and described in Python --------------------------------------

COSIGN = setup.CACHE / "tools" / "bin" / "cosign"
HAVE_COSIGN = os.access(COSIGN, os.X_OK)


def test_release_signed_in_python_verifies_on_the_collections_verifier(tmp_path):
    from ansible_collections.kernelfence.isolation.plugins.module_utils import (
        artifact_verify,
        sbom,
    )

    from tools.kflab import release

    binary = tmp_path / "cargo-audit"
    shutil.copyfile("/bin/true", binary)
    out, signing = tmp_path / "release", tmp_path / "signing"
    manifest = release.make_release(binary, "0.22.2", out, signing,
                                    cosign=COSIGN if HAVE_COSIGN else None)
    assert manifest["signed_by"] == "cryptography"
    assert manifest["sbom_source"] == "cyclonedx-python-lib"
    assert oct((signing / release.KEY_FILE).stat().st_mode & 0o777) == "0o600"
    doc = json.loads((out / release.SBOM).read_text())
    assert sbom.validation_errors(doc) is None
    assert {"alg": "SHA-256", "content": manifest["sha256"]} in \
        doc["metadata"]["component"]["hashes"]
    art = artifact_verify.Artifact(component="executor", name="cargo-audit",
                                   src=str(out / "cargo-audit"), key=str(out / "cosign.pub"),
                                   bundle=str(out / "cargo-audit.bundle"))
    for backend in ["python"] + (["cosign"] if HAVE_COSIGN else []):
        evidence = artifact_verify.verify_artifact(art, backend, str(COSIGN))
        assert evidence.sha256 == manifest["sha256"]
    # The same key signs again (the release is kept when nothing changed) ...
    assert release.make_release(binary, "0.22.2", out, signing) == manifest
    # ... and a modified file no longer verifies: the check can fail.
    (out / "cargo-audit").write_bytes((out / "cargo-audit").read_bytes() + b"\0")
    with pytest.raises(artifact_verify.VerificationFailed, match="does not verify"):
        artifact_verify.verify_artifact(art, "python")


def test_the_collections_action_accepts_the_release_and_its_sbom_as_the_vendors(tmp_path):
    """The real artifact_verify action (verify only, on the controller), as verified_binary
    runs it: the binary's bundle and the release SBOM, signed in Python, both verify."""
    from tools.kflab import release

    binary = tmp_path / "cargo-audit"
    shutil.copyfile("/bin/true", binary)
    out = tmp_path / "release"
    release.make_release(binary, "0.22.2", out, tmp_path / "signing")
    artifact = {"component": "executor", "name": "cargo-audit", "version": "0.22.2",
                "src": str(out / "cargo-audit"), "key": str(out / "cosign.pub"),
                "bundle": str(out / "cargo-audit.bundle"),
                "sbom": {"src": str(out / release.SBOM), "bundle": str(out / release.SBOM_BUNDLE)}}
    book = tmp_path / "verify.yml"
    book.write_text(json.dumps([{"hosts": "localhost", "gather_facts": False, "tasks": [
        {"kernelfence.isolation.artifact_verify": {"install": False, "backend": "python",
                                                   "artifacts": [artifact]},
         "register": "verified"},
        {"ansible.builtin.copy": {"content": "{{ verified.artifacts | to_json }}",
                                  "dest": str(tmp_path / "verified.json"), "mode": "0600"}}]}]))
    playbook = shutil.which("ansible-playbook", path=str(Path(sys.executable).parent))
    proc = subprocess.run([playbook, "-i", "localhost,", "-c", "local", "-e",
                           f"ansible_python_interpreter={sys.executable}", str(book)],
                          capture_output=True, text=True, timeout=300, check=False,
                          env=dict(os.environ, ANSIBLE_CONFIG=str(REPO / "ansible.cfg")))
    assert proc.returncode == 0, proc.stdout[-3000:]
    evidence = json.loads((tmp_path / "verified.json").read_text())[0]["evidence"]
    assert evidence["tool"] == "cryptography" and evidence["sbom_source"] == "vendor"
    assert evidence["sha256"] == json.loads((out / "release.json").read_text())["sha256"]


@pytest.mark.skipif(not HAVE_COSIGN, reason=f"cosign not built yet at {COSIGN}")
def test_the_python_key_imported_for_cosign_signs_what_the_release_key_verifies(tmp_path):
    from tools.kflab import release

    signing = tmp_path / "signing"
    binary = tmp_path / "cargo-audit"
    shutil.copyfile("/bin/true", binary)
    release.make_release(binary, "0.22.2", tmp_path / "release", signing)
    key = release.cosign_key(signing, COSIGN)
    blob = tmp_path / "blob"
    blob.write_bytes(b"signed by the real cosign with the imported key\n")
    env = dict(os.environ, COSIGN_PASSWORD="", TUF_ROOT=str(tmp_path / "tuf"),
               HOME=str(tmp_path))
    subprocess.run([str(COSIGN), "sign-blob", "--yes", "--key", str(key), "--tlog-upload=false",
                    "--bundle", str(tmp_path / "blob.bundle"), str(blob)], check=True,
                   capture_output=True, env=env, timeout=120)
    from ansible_collections.kernelfence.isolation.plugins.module_utils import artifact_verify

    art = artifact_verify.Artifact(component="executor", name="blob", src=str(blob),
                                   key=str(tmp_path / "release" / "cosign.pub"),
                                   bundle=str(tmp_path / "blob.bundle"))
    assert artifact_verify.verify_artifact(art, "python").method == "key"


# --- item 3: molecule's first step -------------------------------------------------------------

def test_release_preflight_names_kf_setup_at_once(tmp_path):
    began = time.monotonic()
    proc = kf(tmp_path, "release", "--for-scenario")
    no_traceback(proc)
    assert proc.returncode == 1 and "fix: ./kf setup" in proc.stderr
    assert time.monotonic() - began < 20
    assert not (tmp_path / "instances").exists()


def test_molecule_create_stops_before_any_boot_with_the_command_to_run_first(tmp_path):
    venv_bin = Path(sys.executable).parent
    playbook = shutil.which("ansible-playbook", path=str(venv_bin)) or \
        shutil.which("ansible-playbook")
    assert playbook, "ansible-playbook not found"
    extra = {"molecule_yml": {"platforms": [{"name": "kf12", "distro": "debian12"}]},
             "molecule_instance_config": str(tmp_path / "instance_config.yml"),
             "ansible_python_interpreter": sys.executable}
    env = dict(os.environ, KF_CACHE=str(tmp_path), MOLECULE_PROJECT_DIRECTORY=str(REPO),
               MOLECULE_SCENARIO_NAME="default", ANSIBLE_CONFIG=str(REPO / "ansible.cfg"),
               **OFFLINE)
    proc = subprocess.run([playbook, "-i", "localhost,", "-c", "local", "-e", json.dumps(extra),
                           str(REPO / "molecule/resources/playbooks/create.yml")],
                          capture_output=True, text=True, env=env, timeout=300, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "fix: ./kf setup" in out
    assert "Boot each platform" not in out
    assert not (tmp_path / "instances").exists() and not (tmp_path / "images").exists()


def test_a_bare_molecule_run_finds_the_release_where_kf_signs_it(tmp_path):
    inv = tmp_path / "inventory"
    inv.mkdir()
    (inv / "hosts.yml").write_text("all:\n  hosts:\n    kf12:\n    kf13:\n")
    (inv / "host_vars").symlink_to(REPO / "molecule/resources/host_vars")
    ansible = shutil.which("ansible", path=str(Path(sys.executable).parent)) or \
        shutil.which("ansible")
    env = {k: v for k, v in os.environ.items() if k != "KF_RELEASE_DIR"}
    env.update(KF_CACHE=str(tmp_path / "cache"), ANSIBLE_CONFIG=str(REPO / "ansible.cfg"))
    proc = subprocess.run([ansible, "all", "-i", str(inv), "-c", "local", "-m", "debug",
                           "-a", "var=kernelfence_release_dir", "-e",
                           f"ansible_python_interpreter={sys.executable}"],
                          capture_output=True, text=True, env=env, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count(f'"{tmp_path / "cache" / "signing" / "release"}"') == 2, proc.stdout


# --- item 4: the benchmark's parts stand alone -------------------------------------------------

def test_native_part_inventory_has_the_components_without_the_fleet_part(tmp_path):
    from bench import fleet_scale

    inv = fleet_scale.write_inventory(tmp_path / "hosts-native.json",
                                      {"kfb1": {"ansible_host": "10.251.1.2"}})
    tool = shutil.which("ansible-inventory", path=str(Path(sys.executable).parent)) or \
        shutil.which("ansible-inventory")
    proc = subprocess.run([tool, "-i", str(inv), "--host", "kfb1"], capture_output=True,
                          text=True, timeout=120, check=False,
                          env=dict(os.environ, ANSIBLE_CONFIG=str(REPO / "ansible.cfg")))
    assert proc.returncode == 0, proc.stderr
    hostvars = json.loads(proc.stdout)
    assert [c["name"] for c in hostvars["kernelfence_components"]][:3] == \
        ["orchestrator", "executor", "model_backend"]
    # Written again over a link of another checkout: replaced, not kept.
    (tmp_path / "group_vars").unlink()
    (tmp_path / "group_vars").symlink_to(tmp_path)
    fleet_scale.write_inventory(inv, {"kfb1": {}})
    assert (tmp_path / "group_vars").resolve() == \
        (REPO / "inventory/example/group_vars").resolve()


def test_bench_parts_are_selected_alone_and_name_what_they_need():
    from bench import run

    parser_args = type("Args", (), {"only": ["native"], "skip_vm": False, "skip_native": False,
                                    "skip_fleet": False, "skip_scan": False})()
    assert run.selected_parts(parser_args) == ["native"]
    parser_args.only = None
    parser_args.skip_vm = parser_args.skip_fleet = True
    assert run.selected_parts(parser_args) == ["native", "scan"]
    assert {"vm", "native", "fleet"} == run.INSTALLING


def test_image_lock_and_root_check_use_the_image_path(monkeypatch, tmp_path):
    monkeypatch.setattr(image, "CACHE", tmp_path)
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(common.StateError) as info:
        image.check_can_build("debian12")
    assert "needs root" in info.value.found and info.value.fix.startswith("sudo ")
