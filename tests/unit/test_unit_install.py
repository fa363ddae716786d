"""Validate-then-apply of units, against this machine's real systemd-analyze (systemd 252).

Only `systemctl show` is answered from a recording: PID 1 here is not systemd.
"""

import subprocess
from pathlib import Path

import pytest
from ansible_collections.kernelfence.isolation.plugins.module_utils.unit_install import (
    UnitInstallError,
    stage_units,
    verify_and_score,
)

HARDENED = """[Service]
ExecStart=/usr/bin/sleep infinity
User=kf-demo
DynamicUser=no
NoNewPrivileges=yes
CapabilityBoundingSet=
PrivateNetwork=yes
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
PrivateDevices=yes
"""


def runner(fragments=None):
    def run(argv):
        if argv[:2] == ["systemctl", "show"]:
            path = (fragments or {}).get(argv[-1], "")
            return (0 if path else 1), path + "\n", "" if path else "Unit not found."
        proc = subprocess.run(argv, capture_output=True, text=True, check=False)
        return proc.returncode, proc.stdout, proc.stderr
    return run


def stage_and_check(tmp_path, units, fragments=None):
    stage = tmp_path / "stage"
    stage.mkdir()
    units = [dict(u, dropin_name="50-kernelfence.conf") for u in units]
    paths = stage_units(units, str(stage), runner(fragments))
    return paths, verify_and_score(units, paths, runner(fragments), "252")


def test_a_clean_unit_passes_and_is_scored(tmp_path):
    paths, scores = stage_and_check(tmp_path, [
        {"name": "kf-demo.service", "component": "demo", "content": HARDENED, "threshold": 10}])
    assert Path(paths["kf-demo.service"]).read_text() == HARDENED
    assert 0 < scores["kf-demo.service"]["exposure"] < 10
    failing = [c["name"] for c in scores["kf-demo.service"]["failing"]]
    assert "RestrictNamespaces=~user" in failing


def test_a_directive_this_systemd_does_not_know_names_the_component_field(tmp_path):
    unit = {"name": "kf-demo.service", "component": "demo", "user_directives": ["PrivatePIDs"],
            "content": HARDENED + "PrivatePIDs=yes\n"}
    with pytest.raises(UnitInstallError) as err:
        stage_and_check(tmp_path, [unit])
    assert ("kernelfence_components[demo].directives: systemd 252 on this host ignores "
            "kf-demo.service:12 (Unknown key 'PrivatePIDs' in section [Service], ignoring.). "
            "Fix: remove PrivatePIDs or target a systemd that knows it") in str(err.value)


def test_exposure_above_the_threshold_lists_the_failing_checks(tmp_path):
    unit = {"name": "kf-demo.service", "component": "demo", "content": HARDENED,
            "threshold": 0.5}
    with pytest.raises(UnitInstallError) as err:
        stage_and_check(tmp_path, [unit])
    message = str(err.value)
    assert message.startswith("kernelfence_components[demo]: exposure ")
    assert "is above its profile threshold 0.5; failing checks: " in message
    assert "RestrictNamespaces=~user" in message


def test_a_dropin_is_judged_with_the_users_unit_and_its_other_dropins(tmp_path):
    user_unit = tmp_path / "agent-report.service"
    user_unit.write_text("[Service]\nExecStart=/usr/bin/sleep infinity\n")
    ours = "[Service]\nUser=kf-demo\nNoNewPrivileges=yes\nPrivateNetwork=yes\n"
    paths, scores = stage_and_check(
        tmp_path, [{"name": "agent-report.service", "dropin": True, "component": "report",
                    "content": ours, "threshold": 10}],
        fragments={"agent-report.service": str(user_unit)})
    staged = Path(paths["agent-report.service"])
    assert staged.read_text() == user_unit.read_text()
    assert (staged.parent / "agent-report.service.d/50-kernelfence.conf").read_text() == ours
    # The drop-in counts: the same unit without it scores worse.
    bare = subprocess.run(["systemd-analyze", "security", "--offline=yes", "--no-pager",
                           str(user_unit)], capture_output=True, text=True, check=False).stdout
    assert scores["agent-report.service"]["exposure"] < float(
        bare.strip().splitlines()[-1].split(":")[1].split()[0])


def test_a_bad_line_in_a_dropin_is_reported_against_the_dropin(tmp_path):
    user_unit = tmp_path / "agent-report.service"
    user_unit.write_text("[Service]\nExecStart=/usr/bin/sleep infinity\n")
    unit = {"name": "agent-report.service", "dropin": True, "component": "report",
            "user_directives": ["ProtectSytem"], "content": "[Service]\nProtectSytem=strict\n"}
    with pytest.raises(UnitInstallError) as err:
        stage_and_check(tmp_path, [unit], fragments={"agent-report.service": str(user_unit)})
    assert ("kernelfence_components[report].directives: systemd 252 on this host ignores "
            "50-kernelfence.conf:2 (Unknown key 'ProtectSytem'") in str(err.value)


def test_a_dropin_for_a_unit_the_host_lacks_says_how_to_fix_it(tmp_path):
    unit = {"name": "agent-report.service", "dropin": True, "component": "report",
            "content": "[Service]\nNoNewPrivileges=yes\n"}
    with pytest.raises(UnitInstallError) as err:
        stage_and_check(tmp_path, [unit])
    assert ("kernelfence_components[report].unit: agent-report.service is not a unit this "
            "host has") in str(err.value)
    assert "Fix: install the unit first" in str(err.value)


FIX = Path(__file__).parent / "fixtures/systemd_analyze"


def test_the_gate_names_every_reason_and_still_scores(tmp_path):
    content = HARDENED.replace("/usr/bin/sleep infinity", "/opt/kernelfence/bin/kf-missing")
    unit = {"name": "kf-demo.service", "component": "demo", "user_directives": ["ProtectSytem"],
            "content": content + "ProtectSytem=strict\n", "threshold": 10}
    with pytest.raises(UnitInstallError) as err:
        stage_and_check(tmp_path, [unit])
    message = str(err.value)
    assert ("kernelfence_components[demo].directives: systemd 252 on this host ignores "
            "kf-demo.service:12 (Unknown key 'ProtectSytem'") in message
    assert ("kernelfence_components[demo]: kf-demo.service:2: Command "
            "/opt/kernelfence/bin/kf-missing is not executable") in message
    assert 0 < err.value.scores["kf-demo.service"]["exposure"] < 10
    assert f"kf-demo.service: exposure {err.value.scores['kf-demo.service']['exposure']}" \
        in message


@pytest.mark.parametrize("version_file", ["systemctl-version-252.txt",
                                          "systemctl-version-257.txt"])
def test_the_gate_refuses_bpf_directives_the_target_cannot_enforce(tmp_path, version_file):
    features = (FIX / version_file).read_text()
    unit = {"name": "kf-demo.service", "component": "demo", "threshold": 10,
            "user_directives": ["RestrictFileSystems"],
            "content": HARDENED + "RestrictFileSystems=ext4 tmpfs\n"}
    stage = tmp_path / "stage"
    stage.mkdir()
    units = [dict(unit, dropin_name="50-kernelfence.conf")]
    paths = stage_units(units, str(stage), runner())
    if "-BPF_FRAMEWORK" in features:
        with pytest.raises(UnitInstallError) as err:
            verify_and_score(units, paths, runner(), "252", features)
        assert ("kernelfence_components[demo]: kf-demo.service:12: RestrictFileSystems=ext4 "
                "tmpfs is accepted but not enforced: systemd 252 on the target is built "
                "without BPF_FRAMEWORK") in str(err.value)
        assert "kf-demo.service" in err.value.scores
    else:
        assert verify_and_score(units, paths, runner(), "252", features)["kf-demo.service"]
