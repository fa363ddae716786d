"""unit_install compiles seccomp profiles at deploy time (files[].bpf_dest): the real module in
check mode on this machine (real systemd-analyze, real libseccomp binding), with every file in a
temporary directory. Check mode because PID 1 here is not systemd (no daemon-reload)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from ansible_collections.kernelfence.isolation.plugins.module_utils.hardening import (
    workload_syscalls,
)
from ansible_collections.kernelfence.isolation.plugins.module_utils.seccomp_profile import (
    bpf_checksums,
    compile_bpf,
    oci_profile,
    parse_syscall_groups,
)
from test_seccomp_program import seccomp_binding

REPO = Path(__file__).resolve().parents[2]
MODULE = REPO / "plugins/modules/unit_install.py"
GROUPS = parse_syscall_groups(
    (Path(__file__).parent / "fixtures/systemd_analyze/syscall-filter-252.txt").read_text())
UNIT = "[Service]\nExecStart=/usr/bin/sleep infinity\nNoNewPrivileges=yes\n"


@pytest.fixture(scope="module")
def binding_dir(tmp_path_factory):
    """A directory holding only libseccomp's binding, for the module's PYTHONPATH."""
    module = seccomp_binding()
    path = tmp_path_factory.mktemp("binding")
    os.symlink(module.__file__, path / Path(module.__file__).name)
    return path


@pytest.fixture
def profile_text():
    allow, deny, readd = workload_syscalls({"syscalls": {}})
    return json.dumps(oci_profile(allow, deny, GROUPS, readd), indent=4) + "\n"


def run_module(tmp_path, binding_dir, files, check=True):
    args = {"units": [{"name": "kf-probe.service", "content": UNIT, "component": "probe"}],
            "files": files, "unit_dir": str(tmp_path / "units"), "enable": False,
            "start": False, "remove": [str(tmp_path / "kf-launch.py")],
            "_ansible_check_mode": check, "_ansible_diff": True}
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(binding_dir), str(REPO / ".collections"), *sys.path]))
    proc = subprocess.run([sys.executable, str(MODULE)], input=json.dumps(
        {"ANSIBLE_MODULE_ARGS": args}), capture_output=True, text=True, env=env, timeout=120,
        check=False)
    return json.loads(proc.stdout[proc.stdout.index("{"):])


def item(tmp_path, content):
    return {"dest": str(tmp_path / "seccomp.json"), "content": content, "owner": "root",
            "group": "root", "mode": "0640", "unit": "kf-probe.service",
            "bpf_dest": str(tmp_path / "seccomp.bpf")}


def install(tmp_path, content):
    """The files as a previous run left them."""
    program, _unknown = compile_bpf(json.loads(content))
    (tmp_path / "units").mkdir(exist_ok=True)
    (tmp_path / "units/kf-probe.service").write_text(UNIT)
    (tmp_path / "seccomp.json").write_text(content)
    (tmp_path / "seccomp.bpf").write_bytes(program)
    (tmp_path / "seccomp.bpf.sha256").write_text(bpf_checksums(
        str(tmp_path / "seccomp.bpf"), program, str(tmp_path / "seccomp.json"), content))
    for name in ("units/kf-probe.service", "seccomp.json", "seccomp.bpf", "seccomp.bpf.sha256"):
        os.chmod(tmp_path / name, 0o644 if name.startswith("units") else 0o640)
    return program


def test_a_first_run_compiles_the_program_and_writes_it_with_its_checksums(
        tmp_path, binding_dir, profile_text):
    program, unknown = compile_bpf(json.loads(profile_text))
    result = run_module(tmp_path, binding_dir, [item(tmp_path, profile_text)])
    assert result.get("changed") is True, result.get("msg")
    bpf = str(tmp_path / "seccomp.bpf")
    assert result["seccomp_programs"][bpf] == {
        "profile": str(tmp_path / "seccomp.json"), "checksums": bpf + ".sha256",
        "sha256": hashlib.sha256(program).hexdigest(), "bytes": len(program),
        "unknown_syscalls": unknown}
    diffs = {d["after_header"]: d for d in result["diff"]}
    assert f"sha256 {hashlib.sha256(program).hexdigest()}" in diffs[bpf]["after"]
    assert diffs[bpf + ".sha256"]["after"].startswith(hashlib.sha256(program).hexdigest())
    assert not os.path.exists(bpf), "check mode writes nothing"


def test_an_installed_program_that_still_matches_is_no_change(
        tmp_path, binding_dir, profile_text):
    install(tmp_path, profile_text)
    result = run_module(tmp_path, binding_dir, [item(tmp_path, profile_text)])
    assert result.get("changed") is False, result
    assert result["changed_units"] == [] and result["diff"] == []


@pytest.mark.parametrize("damage", ["program", "checksums", "launcher"])
def test_a_changed_program_or_a_stale_file_is_put_right(
        tmp_path, binding_dir, profile_text, damage):
    program = install(tmp_path, profile_text)
    if damage == "program":
        (tmp_path / "seccomp.bpf").write_bytes(program[:-8])
        changed = str(tmp_path / "seccomp.bpf")
    elif damage == "checksums":
        (tmp_path / "seccomp.bpf.sha256").write_text("0" * 64 + "  x\n")
        changed = str(tmp_path / "seccomp.bpf.sha256")
    else:  # the launcher an earlier version installed
        (tmp_path / "kf-launch.py").write_text("# old\n")
        changed = str(tmp_path / "kf-launch.py")
    result = run_module(tmp_path, binding_dir, [item(tmp_path, profile_text)])
    assert result.get("changed") is True
    assert [d["after_header"] for d in result["diff"]] == [changed]
    if damage == "launcher":
        assert result["removed"] == [changed] and result["changed_units"] == []
    else:
        assert result["changed_units"] == ["kf-probe.service"]


def test_a_profile_the_compiler_refuses_fails_naming_the_file_and_field(
        tmp_path, binding_dir, profile_text):
    bad = json.loads(profile_text)
    bad["syscalls"][0]["action"] = "SCMP_ACT_TRACE"
    result = run_module(tmp_path, binding_dir, [item(tmp_path, json.dumps(bad))], check=False)
    assert result.get("failed") is True
    assert result["msg"].startswith(f"{tmp_path}/seccomp.json (unit kf-probe.service): ")
    assert "syscalls[0].action 'SCMP_ACT_TRACE'" in result["msg"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [], "nothing was written"
