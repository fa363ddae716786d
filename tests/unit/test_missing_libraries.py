"""A library the collection needs and the Python lacks: the task fails naming the library and
the command that installs it (issue 16 item 13).

The library is hidden for real, in a subprocess: a sitecustomize on PYTHONPATH puts None into
sys.modules under its name, so importing it raises ImportError exactly as when it is absent.
The action plugin runs in a real ansible-playbook, the module as Ansible runs it.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def hide(tmp_path, *names):
    site = tmp_path / "hide"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import sys\n" + "".join(f"sys.modules[{n!r}] = None\n" for n in names))
    return str(site)


def run_action(tmp_path, hidden, **args):
    src = tmp_path / "tool"
    src.write_bytes(b"#!/bin/sh\n")
    artifact = {"component": "executor", "name": "tool", "src": str(src),
                "bundle": str(tmp_path / "tool.bundle"), "trusted_root": str(tmp_path / "tr.json"),
                "certificate_identity": "https://ci.example/release",
                "certificate_oidc_issuer": "https://issuer.example"}
    out = tmp_path / "result.json"
    tasks = [{"name": "verify", "kernelfence.isolation.artifact_verify":
              {"artifacts": [artifact], "install": False, **args},
              "register": "r", "ignore_errors": True},
             {"name": "keep the result", "ansible.builtin.copy":
              {"content": "{{ r | to_json }}", "dest": str(out), "mode": "0600"}}]
    (tmp_path / "play.yml").write_text(yaml.safe_dump(
        [{"hosts": "localhost", "gather_facts": False, "tasks": tasks}]))
    env = dict(os.environ, PYTHONPATH=hide(tmp_path, *hidden), ANSIBLE_NOCOLOR="1",
               ANSIBLE_COLLECTIONS_PATH=str(REPO / ".collections"),
               ANSIBLE_LOCALHOST_WARNING="0", ANSIBLE_INVENTORY_UNPARSED_WARNING="0",
               PATH=f"{BIN}:/usr/bin:/bin")  # no cosign: the Python path verifies
    proc = subprocess.run(
        [str(BIN / "ansible-playbook"), "-i", "localhost,", "-c", "local",
         "-e", f"ansible_python_interpreter={sys.executable}", str(tmp_path / "play.yml")],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(out.read_text())


def fixes(msg):
    """(library, python, install command) of each reason of a joined message."""
    out = []
    for part in msg.split(" | "):
        head, _sep, fix = part.partition(". Fix: ")
        assert head.startswith("Failed to import the required Python library ("), part
        python, _sep, install = fix.partition(" ")
        assert Path(python).name.startswith("python") and Path(python).parent == BIN  # ansible's
        out.append((head.split("(", 1)[1].split(")", 1)[0], install))
    return out


def test_a_missing_sigstore_is_named_with_its_install_command(tmp_path):
    result = run_action(tmp_path, ("sigstore",))
    assert result["failed"] is True
    assert result["missing_libraries"] == ["sigstore"]
    assert fixes(result["msg"]) == [
        ("sigstore", "-m pip install sigstore (or put cosign on the controller's PATH)")]


def test_every_missing_controller_library_is_named_once(tmp_path):
    # jsonschema stands for cyclonedx-python-lib installed without its json-validation extra.
    result = run_action(tmp_path, ("cryptography", "jsonschema"), backend="python")
    assert result["failed"] is True
    assert result["missing_libraries"] == ["cryptography", "cyclonedx-python-lib"]
    assert fixes(result["msg"]) == [
        ("cryptography", "-m pip install cryptography"),
        ("cyclonedx-python-lib", "-m pip install 'cyclonedx-python-lib[json-validation]'")]


def test_sigstore_is_not_required_when_cosign_verifies(tmp_path):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    cosign = bindir / "cosign"
    cosign.write_text("#!/bin/sh\nexit 1\n")
    cosign.chmod(0o755)
    result = run_action(tmp_path, ("sigstore",), backend="cosign", cosign=str(cosign))
    assert result["failed"] is True
    assert "missing_libraries" not in result  # past the check, failing in the verification
    assert "Failed to import" not in result["msg"]


def run_module(tmp_path, hidden, **args):
    argsfile = tmp_path / "args.json"
    (tmp_path / "root").mkdir()
    argsfile.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": {
        "items": [], "install_root": str(tmp_path / "root"), **args}}))
    env = dict(os.environ, PYTHONPATH=f"{hide(tmp_path, *hidden)}:{REPO / '.collections'}")
    proc = subprocess.run(
        [sys.executable, "-m", "ansible_collections.kernelfence.isolation.plugins.modules."
         "artifact_verify", str(argsfile)],
        capture_output=True, text=True, env=env, check=False, timeout=120)
    return json.loads(proc.stdout)


def test_the_module_names_the_target_package_for_recheck_on_host(tmp_path):
    result = run_module(tmp_path, ("cryptography",), recheck_on_host=True)
    assert result["failed"] is True
    assert result["missing_libraries"] == ["cryptography"]
    assert result["msg"].startswith(
        "Failed to import the required Python library (cryptography) on ")
    assert result["msg"].endswith(". Fix: apt-get install python3-cryptography on the "
                                  "target, or set recheck_on_host: false")
    assert not list((tmp_path / "root").iterdir())


def test_the_module_needs_no_cryptography_without_recheck(tmp_path):
    result = run_module(tmp_path, ("cryptography",))
    assert "failed" not in result, result


def test_unit_install_names_python3_seccomp_before_it_writes_anything(tmp_path):
    """On systemd < 257 the module compiles each profile to BPF on the target before any write;
    without libseccomp's binding it fails naming the file, the package and the fix."""
    profile = {"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 1,
               "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW"}]}
    units = tmp_path / "units"
    args = {"units": [{"name": "kf-probe.service", "component": "probe",
                       "content": "[Service]\nExecStart=/usr/bin/sleep infinity\n"}],
            "files": [{"dest": str(tmp_path / "seccomp.json"), "unit": "kf-probe.service",
                       "content": json.dumps(profile), "bpf_dest": str(tmp_path / "seccomp.bpf")}],
            "unit_dir": str(units), "enable": False, "start": False,
            "pending_dir": str(tmp_path / "pending")}
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([hide(tmp_path, "seccomp"),
                                                       str(REPO / ".collections")]))
    proc = subprocess.run([sys.executable, str(REPO / "plugins/modules/unit_install.py")],
                          input=json.dumps({"ANSIBLE_MODULE_ARGS": args}), capture_output=True,
                          text=True, env=env, timeout=120, check=False)
    result = json.loads(proc.stdout[proc.stdout.index("{"):])
    assert result.get("failed") is True, result
    assert "libseccomp's Python binding is not importable" in result["msg"]
    assert "Fix: install python3-seccomp" in result["msg"]
    assert str(tmp_path / "seccomp.bpf") in result["msg"]
    assert not result.get("changed")
    assert not units.exists() and not (tmp_path / "seccomp.bpf").exists()
