"""The host baseline's reader and checks on real recorded /proc and /sys trees
(tests/unit/fixtures/host_baseline/README.md)."""

import json
from pathlib import Path

import pytest
import yaml
from ansible_collections.kernelfence.isolation.plugins.module_utils import host_baseline as hb

FIX = Path(__file__).parent / "fixtures/host_baseline"
CASES = yaml.safe_load((FIX / "cases.yml").read_text())
ROLE = Path(__file__).resolve().parents[2] / "roles/host_baseline"


def recorded(tree: str) -> tuple[dict, int | None]:
    meta_file = FIX / tree / "meta.json"
    meta = json.loads(meta_file.read_text()) if meta_file.exists() else {}
    raw = hb.read_host(str(FIX / tree), meta.get("landlock_abi"))
    return raw, hb.systemd_major(meta.get("systemctl_version", ""))


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_recorded_host(case):
    raw, version = recorded(case["tree"])
    found = hb.facts(raw, version)
    assert {k: found[k] for k in case["expect"]} == case["expect"]
    if "problems" not in case:
        return
    wanted = hb.wanted_settings({}, False)
    got = hb.problems(found, wanted, require_landlock=False)
    assert [p.split(":")[0] for p in got] == case["problems"]
    present, unsupported = hb.split_supported(raw, wanted)
    assert unsupported == case["unsupported"]
    assert sorted(hb.drift(raw, present)) == case["drift"]


def test_a_key_the_kernel_lacks_is_left_out_of_the_file():
    raw, _version = recorded("ci-host")  # no Yama on this kernel
    present, unsupported = hb.split_supported(raw, hb.wanted_settings({}, False))
    text = hb.render(present)
    assert "kernel.yama.ptrace_scope" not in text and unsupported == ["kernel.yama.ptrace_scope"]
    assert "kernel.dmesg_restrict = 1\n" in text


def test_every_setting_renders_once_with_the_attack_it_removes():
    text = hb.render(list(hb.SETTINGS))
    for s in hb.SETTINGS:
        assert text.count(f"\n{s.key} = {s.value}\n") == 1, s.key
        assert f"# {s.name}: removes {s.removes}\n" in text
        assert s.value in s.accept


def test_a_setting_turned_off_is_not_written():
    chosen = hb.wanted_settings({"perf_event_paranoid": False}, False)
    assert "kernel.perf_event_paranoid" not in hb.render(chosen)
    assert len(chosen) == len(hb.SETTINGS) - 1


def test_unknown_setting_name_names_the_fix():
    with pytest.raises(ValueError, match=r"settings: unknown setting\(s\) ptrace\. Fix: use one of "
                                         r"ptrace_scope, "):
        hb.wanted_settings({"ptrace": False}, False)


def test_stricter_live_value_is_not_rewritten_and_laxer_is():
    raw, _version = recorded("ci-host")
    bpf = hb.BY_NAME["unprivileged_bpf_disabled"]
    raw["sysctl"][bpf.key] = "1"  # locked until reboot, stricter than our 2
    assert hb.drift(raw, [bpf]) == {}
    raw["sysctl"][bpf.key] = "0"
    assert hb.drift(raw, [bpf]) == {bpf.key: {"live": "0", "wanted": 2}}


def test_userns_restriction_refused_where_the_wrapper_needs_it():
    raw, version = recorded("ci-host")  # systemd 252: the units run under bubblewrap
    message = hb.refuse_userns_restriction(hb.facts(raw, version))
    assert message.startswith("host_baseline_restrict_user_namespaces: systemd 252 on this host "
                              "runs every component under bubblewrap")
    assert "Fix: set host_baseline_restrict_user_namespaces: false" in message
    # Same kernel under systemd 257: still refused, this kernel has no switch for it.
    message = hb.refuse_userns_restriction(hb.facts(raw, 257))
    assert "this kernel has no kernel.unprivileged_userns_clone" in message


def test_wrapper_without_user_namespaces_is_a_problem():
    raw, version = recorded("ci-host")
    raw["sysctl"][hb.MAX_USERNS] = "0"
    found = hb.facts(raw, version)
    got = hb.problems(found, [], require_landlock=False)
    assert any(p.startswith("user namespaces: systemd 252 runs the components under bubblewrap")
               and "user.max_user_namespaces=0" in p for p in got), got


def test_hidepid_on_proc_is_a_problem_with_the_fix():
    raw, _version = recorded("hidepid")
    got = hb.problems(hb.facts(raw, 257), [], require_landlock=False)
    assert any(p.startswith("/proc is mounted with hidepid=invisible, which breaks systemd and "
                            "polkit") for p in got), got


def test_landlock_only_required_when_asked():
    raw, version = recorded("ci-host")
    raw["landlock_abi"] = "EOPNOTSUPP"
    found = hb.facts(raw, version)
    assert not any(p.startswith("Landlock") for p in hb.problems(found, [], False))
    assert any(p.startswith("Landlock: not available (EOPNOTSUPP)")
               for p in hb.problems(found, [], True))


def test_systemd_major_from_recorded_output():
    assert hb.systemd_major(json.loads((FIX / "ci-host/meta.json").read_text())
                            ["systemctl_version"]) == 252
    assert hb.systemd_major("") is None


def test_recorder_reads_what_the_module_reads():
    namespace: dict = {}
    exec(compile((FIX / "record.py").read_text(), "record.py", "exec"), namespace)
    assert namespace["KEYS"] == [s.key for s in hb.SETTINGS] + list(hb.EXTRA_KEYS)
    assert namespace["FILES"] == list(hb.FILES)


def test_role_switches_match_the_settings_and_the_spec():
    defaults = yaml.safe_load((ROLE / "defaults/main.yml").read_text())
    spec = yaml.safe_load((ROLE / "meta/argument_specs.yml").read_text())
    options = spec["argument_specs"]["main"]["options"]
    assert set(defaults) == set(options)
    for name, value in defaults.items():
        assert options[name]["default"] == value, name
    switches = {n[len("host_baseline_"):] for n in defaults} - {
        "restrict_user_namespaces", "require_landlock", "strict", "file"}
    assert switches == set(hb.BY_NAME)
    tasks = yaml.safe_load((ROLE / "tasks/main.yml").read_text())
    module_task = next(t for t in tasks if "kernelfence.isolation.host_baseline" in t)
    passed = module_task["kernelfence.isolation.host_baseline"]["settings"]
    assert set(passed) == set(hb.BY_NAME)


def test_userns_restriction_on_the_debian_kernel_depends_on_systemd():
    raw, version = recorded("kf12-fresh")  # Debian's kernel has the switch
    assert "systemd 252 on this host runs every component under bubblewrap" in \
        hb.refuse_userns_restriction(hb.facts(raw, version))
    assert hb.refuse_userns_restriction(hb.facts(raw, 257)) is None
    present, _missing = hb.split_supported(raw, hb.wanted_settings({}, True))
    assert "kernel.unprivileged_userns_clone = 0\n" in hb.render(present)
