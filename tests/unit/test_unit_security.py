"""unit_security, run as Ansible runs it, against this machine's real systemd-analyze (252).

`systemctl --version` answers here without systemd as PID 1; where a test needs another
target's build (257, +BPF_FRAMEWORK), a `systemctl` earlier on PATH replays that target's
recorded output, so the module reads the features on the host it runs on, as on a target.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from ansible_collections.kernelfence.isolation.plugins.module_utils.systemd_analyze import (
    check_ids,
    parse_verify,
    security_policy_problems,
    systemd_features,
    unenforced_directives,
    verify_errors,
)

REPO = Path(__file__).resolve().parents[2]
MODULE = REPO / "plugins/modules/unit_security.py"
FIX = Path(__file__).parent / "fixtures/systemd_analyze"
POST = (FIX / "post-tool-exec.service").read_text()
V252 = (FIX / "systemctl-version-252.txt").read_text()
V257 = (FIX / "systemctl-version-257.txt").read_text()


def run_module(tmp_path, args, version_output=None):
    """Run the module file as Ansible does (args file); optionally on a target whose
    `systemctl --version` is the recorded one."""
    env = dict(os.environ, PYTHONPATH=str(REPO / ".collections"))
    if version_output is not None:
        fake = tmp_path / "target-bin"
        fake.mkdir(exist_ok=True)
        (fake / "version.txt").write_text(version_output)
        script = fake / "systemctl"
        script.write_text(f"#!/bin/sh\ncat {fake / 'version.txt'}\n")
        script.chmod(0o755)
        env["PATH"] = f"{fake}:{env['PATH']}"
    args_file = tmp_path / "args.json"
    args_file.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": args}))
    proc = subprocess.run([sys.executable, str(MODULE), str(args_file)], capture_output=True,
                          text=True, env=env, check=False)
    return json.loads(proc.stdout)


def write_unit(directory, name, text, dropins=None):
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(text)
    for conf, content in (dropins or {}).items():
        (directory / f"{name}.d").mkdir(exist_ok=True)
        (directory / f"{name}.d" / conf).write_text(content)
    return path


# --- 5: every reason of a failed verify is named, and the unit is still scored ---------------

def test_the_posts_unit_is_scored_and_its_one_line_filter_named(tmp_path):
    path = write_unit(tmp_path / "units", "tool-exec.service", POST)
    result = run_module(tmp_path, {"paths": [str(path)]})
    assert result["failed"]
    assert result["exposure"] == 2.8 and result["band"] == "OK"  # platform.md: 2.8 offline
    msg = result["msg"]
    assert (f"{path}:17: SystemCallFilter=@system-service ~@privileged @resources is an allow "
            "list") in msg
    assert "nothing of '~@privileged @resources' is denied" in msg
    assert "Fix: two lines, SystemCallFilter=@system-service then " \
           "SystemCallFilter=~@privileged @resources" in msg
    assert "Service has no ExecStart=" in msg  # the post shows a [Service] excerpt only
    assert "exposure of tool-exec.service as systemd loads it: 2.8 OK" in msg
    assert "placeholder ExecStart=/bin/true" in result["exposure_note"]
    assert path.read_text() == POST and os.listdir(path.parent) == ["tool-exec.service"]


def test_every_reason_verify_fails_for_is_named_and_the_exposure_returned(tmp_path):
    text = (FIX / "post-with-command.service").read_text()
    path = write_unit(tmp_path / "units", "tool-exec.service", text)
    result = run_module(tmp_path, {"paths": [str(path)]})
    assert result["failed"] and result["exposure"] == 2.8
    msg = result["msg"]
    assert f"{path}:3: Command /usr/local/bin/tool-exec is not executable" in msg
    assert f"{path}:18: SystemCallFilter=@system-service ~@privileged @resources" in msg
    assert f"{path}:19: Unknown key 'PrivatePIDs' in section [Service]" in msg
    assert {(f["line"], f["kind"]) for f in result["ignored"] + result["errors"]} == {
        (3, "missing-executable"), (18, "unparsable-value"), (19, "unknown-directive")}
    assert "exposure_note" not in result


def test_a_clean_unit_still_passes(tmp_path):
    path = write_unit(tmp_path / "units", "ok.service",
                      "[Service]\nExecStart=/bin/true\nDynamicUser=yes\nPrivateNetwork=yes\n")
    result = run_module(tmp_path, {"paths": [str(path)], "threshold": 10})
    assert not result.get("failed"), result.get("msg")
    assert result["ignored"] == result["errors"] == result["unenforced"] == []


def test_the_recorded_252_verify_output_gives_one_finding_per_reason():
    """The same reasons from the recorded output, without depending on the host's systemd."""
    stderr = (FIX / "verify-post-with-command-252.stderr").read_text()
    path = "/tmp/kf-record/tool-exec.service"
    files = [(path, (FIX / "post-with-command.service").read_text())]
    ignored = {(f["line"], f["kind"]) for f in parse_verify(stderr, [path])}
    errors = verify_errors(stderr, {"tool-exec.service": files})
    assert ignored == {(18, "unparsable-value"), (19, "unknown-directive")}
    assert [(e["line"], e["kind"]) for e in errors] == [(3, "missing-executable")]
    assert "Fix: install /usr/local/bin/tool-exec on the target" in errors[0]["message"]


# --- 6: accepted but not enforced on the target ---------------------------------------------

BPF_UNIT = """[Service]
ExecStart=/bin/true
DynamicUser=yes
RestrictFileSystems=ext4 tmpfs
SocketBindDeny=any
SocketBindDeny=
RestrictNetworkInterfaces=lo
"""
BPF_DROPIN = "[Service]\nSocketBindAllow=tcp:8080\nRestrictFileSystems=\n"


def test_features_are_read_from_systemctl_version():
    old, new = systemd_features(V252), systemd_features(V257)
    assert old["version"] == 252 and "BPF_FRAMEWORK" in old["disabled"]
    assert new["version"] == 257 and "BPF_FRAMEWORK" in new["enabled"]


@pytest.mark.parametrize("version_output", [V252, V257], ids=["252", "257"])
def test_bpf_directives_are_findings_only_without_bpf_framework(tmp_path, version_output):
    path = write_unit(tmp_path / "units", "bpf.service", BPF_UNIT,
                      {"50-bind.conf": BPF_DROPIN})
    result = run_module(tmp_path, {"paths": [str(path)]}, version_output)
    dropin = f"{path}.d/50-bind.conf"
    found = {(Path(f["file"]).name, f["line"], f["message"].split("=")[0])
             for f in result["unenforced"]}
    if "-BPF_FRAMEWORK" in version_output:
        # RestrictFileSystems= and SocketBindDeny= were reset by later empty assignments.
        assert found == {("bpf.service", 7, "RestrictNetworkInterfaces"),
                         ("50-bind.conf", 2, "SocketBindAllow")}
        assert result["failed"]
        assert (f"{dropin}:2: SocketBindAllow=tcp:8080 is accepted but not enforced: systemd "
                "252 on the target is built without BPF_FRAMEWORK") in result["msg"]
        assert result["systemd_features"]["version"] == 252
    else:
        assert found == set() and not result.get("failed"), result.get("msg")
        assert result["systemd_features"]["version"] == 257


def test_capabilities_under_private_users_are_void_findings(tmp_path):
    unit = ("[Service]\nExecStart=/bin/true\nUser=tool-exec\n"
            "CapabilityBoundingSet=CAP_NET_BIND_SERVICE\nAmbientCapabilities=CAP_NET_RAW\n"
            "AmbientCapabilities=\nAmbientCapabilities=CAP_NET_BIND_SERVICE\n")
    path = write_unit(tmp_path / "units", "caps.service", unit,
                      {"10-users.conf": "[Service]\nPrivateUsers=yes\n"})
    result = run_module(tmp_path, {"paths": [str(path)]}, V257)
    assert [(f["line"], f["kind"]) for f in result["unenforced"]] == [
        (4, "void-capability"), (7, "void-capability")]
    assert (f"{path}:7: AmbientCapabilities=CAP_NET_BIND_SERVICE is void on the host: "
            "PrivateUsers=yes (10-users.conf:2)") in result["msg"]
    # Control: a later drop-in turning the user namespace off makes the grant real.
    (Path(f"{path}.d") / "20-host-users.conf").write_text("[Service]\nPrivateUsers=no\n")
    assert run_module(tmp_path, {"paths": [str(path)]}, V257)["unenforced"] == []


def test_a_bounding_set_that_only_removes_is_not_a_grant():
    files = [("/u.service", "[Service]\nPrivateUsers=self\nCapabilityBoundingSet=~CAP_SYS_ADMIN\n"
                            "CapabilityBoundingSet=\n")]
    assert unenforced_directives(files, systemd_features(V257)) == []
    files = [("/u.service", "[Service]\nPrivateUsers=self\nCapabilityBoundingSet=CAP_KILL\n")]
    assert [f["line"] for f in unenforced_directives(files, systemd_features(V257))] == [3]


# --- 7: a security policy systemd would half ignore is refused ---------------------------------

KNOWN_252 = check_ids((FIX / "security-checks-252.json").read_text())


def test_the_check_ids_come_from_systemd_analyze_itself():
    assert len(KNOWN_252) == 81
    assert {"PrivateNetwork", "RestrictNamespaces_user", "SystemCallFilter_privileged"} <= set(
        KNOWN_252)


def test_policy_problems_name_the_file_check_and_field():
    problems = security_policy_problems(
        {"PrivateNetwrk": {"weight": 10}, "PrivateNetwork": {"weight": "heavy"},
         "PrivateTmp": {"range": 1.5, "wieght": 3}, "UMask": {"weight": 100}},
        "/p.json", KNOWN_252)
    assert problems == [
        "/p.json: unknown check 'PrivateNetwrk'. Fix: did you mean PrivateNetwork?",
        "/p.json: check 'PrivateNetwork' field 'weight' is 'heavy', not a whole number >= 0. "
        "Fix: e.g. \"weight\": 1000",
        "/p.json: check 'PrivateTmp' field 'range' is 1.5, not a whole number >= 0. "
        "Fix: e.g. \"weight\": 1000",
        "/p.json: check 'PrivateTmp' has unknown field 'wieght'. Fix: use weight, range, "
        "description_good, description_bad, description_na"]


@pytest.mark.parametrize("policy,named", [
    ({"PrivateNetwrk": {"weight": 0}}, "unknown check 'PrivateNetwrk'"),
    ({"PrivateNetwork": {"weight": "0"}}, "check 'PrivateNetwork' field 'weight' is '0'"),
], ids=["unknown-check", "string-weight"])
def test_the_module_refuses_a_policy_systemd_would_ignore(tmp_path, policy, named):
    path = write_unit(tmp_path / "units", "ok.service",
                      "[Service]\nExecStart=/bin/true\nDynamicUser=yes\n")
    policy_file = tmp_path / "policy.json"
    policy_file.write_text(json.dumps(policy))
    result = run_module(tmp_path, {"paths": [str(path)], "security_policy": str(policy_file)})
    assert result["failed"] and "exposure" not in result
    assert result["msg"].startswith(f"security_policy: {policy_file}: ")
    assert named in result["msg"]


def test_a_valid_policy_is_used(tmp_path):
    path = write_unit(tmp_path / "units", "ok.service",
                      "[Service]\nExecStart=/bin/true\nDynamicUser=yes\n")
    plain = run_module(tmp_path, {"paths": [str(path)]})
    policy_file = tmp_path / "policy.json"
    policy_file.write_text(json.dumps({c: {"weight": 0} for c in KNOWN_252
                                       if c not in ("PrivateNetwork", "UserOrDynamicUser")}))
    weighted = run_module(tmp_path, {"paths": [str(path)], "security_policy": str(policy_file)})
    assert not weighted.get("failed"), weighted.get("msg")
    assert weighted["exposure"] != plain["exposure"]


def test_a_tilde_inside_a_deny_list_is_explained(tmp_path):
    unit = ("[Service]\nExecStart=/bin/true\nDynamicUser=yes\n"
            "SystemCallFilter=~@privileged ~@mount\n")
    path = write_unit(tmp_path / "units", "inner.service", unit)
    result = run_module(tmp_path, {"paths": [str(path)]})
    assert result["failed"] and result["exposure"] is not None
    assert (f"{path}:4: SystemCallFilter=~@privileged ~@mount: the leading '~' already makes "
            "the whole line a deny list; systemd drops '~@mount'. "
            "Fix: SystemCallFilter=~@privileged @mount") in result["msg"]


def test_a_bad_line_in_a_dropin_beside_the_file_is_named(tmp_path):
    path = write_unit(tmp_path / "units", "ok.service",
                      "[Service]\nExecStart=/bin/true\nDynamicUser=yes\n",
                      {"50-local.conf": "[Service]\nProtectSytem=strict\n"})
    result = run_module(tmp_path, {"paths": [str(path)]})
    assert result["failed"]
    assert (f"{path}.d/50-local.conf:2: Unknown key 'ProtectSytem' in section [Service], "
            "ignoring. Fix: remove it or target a systemd that knows it") in result["msg"]
    assert result["verified"] == [str(path), f"{path}.d/50-local.conf"]
