"""The unit pipeline: profiles as data rendered per systemd version, checked by real systemd."""

import subprocess
from pathlib import Path

import pytest
import yaml
from ansible_collections.kernelfence.isolation.plugins.module_utils.component_model import (
    normalize_components,
)
from ansible_collections.kernelfence.isolation.plugins.module_utils.hardening import (
    SCRATCH_EXPOSURE,
    exec_lines,
    service_directives,
    threshold,
    unit_word,
    wrapper_argv,
)
from ansible_collections.kernelfence.isolation.plugins.module_utils.systemd_analyze import (
    parse_security,
    parse_verify,
)

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = yaml.safe_load(
    (REPO / "inventory/example/group_vars/kernelfence/components.yml").read_text())


@pytest.fixture(scope="module")
def host_systemd():
    """Major version of this machine's systemd-analyze (the one every real check here uses)."""
    return int(subprocess.run(["systemd-analyze", "--version"], capture_output=True, text=True,
                              check=True).stdout.split()[1])


@pytest.fixture(scope="module")
def records():
    return {r["name"]: r for r in normalize_components(EXAMPLE["kernelfence_components"])}


def as_dict(pairs):
    out = {}
    for key, value in pairs:
        out.setdefault(key, []).append(value)
    return out


def render(record, version):
    lines = ["[Unit]", f"Description={record['name']}", "", "[Service]"]
    lines += [f"{k}={v}" for k, v in exec_lines(record, version)]
    lines += [f"{k}={v}" for k, v in service_directives(record, version, record["client_of"])]
    return "\n".join([*lines, "", "[Install]", "WantedBy=multi-user.target", ""])


def test_native_pid_namespace_on_257(records):
    unit = as_dict(service_directives(records["executor"], 257))
    assert unit["PrivatePIDs"] == ["yes"]
    assert unit["RestrictNamespaces"] == ["yes"]
    assert unit["PrivateIPC"] == ["yes"]


def test_wrapper_on_252_admits_only_its_namespaces(records):
    unit = as_dict(service_directives(records["executor"], 252))
    assert "PrivatePIDs" not in unit
    assert unit["RestrictNamespaces"] == ["user mnt pid"]
    argv = wrapper_argv()
    assert argv[0] == "/usr/bin/bwrap" and argv[-1] == "--"
    for flag in ("--unshare-pid", "--unshare-user", "--die-with-parent", "--cap-drop", "--proc"):
        assert flag in argv


def test_252_checks_the_compiled_program_then_hands_it_to_bubblewrap_without_python(records):
    rec = records["executor"]
    lines = exec_lines(rec, 252)
    assert [key for key, _value in lines] == ["ExecStartPre", "ExecStart"]
    assert lines[0][1] == ("/usr/bin/sha256sum --check --quiet --strict "
                           "/etc/kernelfence/executor/seccomp.bpf.sha256")
    start = lines[1][1]
    # A fixed sh line opens the program as descriptor 3 ('$$' is systemd's literal '$'); the
    # program's path and bubblewrap's argv are its arguments, the command comes last.
    assert start.startswith("/bin/sh -c 'exec \"$$@\" 9<\"$$0\"' "
                            "/etc/kernelfence/executor/seccomp.bpf /usr/bin/bwrap --bind / / ")
    assert start.endswith(" --cap-drop ALL --seccomp 9 -- " + rec["command"])
    assert "python" not in start.split(" -- ")[0] and "kf-launch" not in start
    assert " ".join(wrapper_argv()) in start.replace("--seccomp 9 ", "")


def test_wrapper_words_survive_systemds_expansion():
    assert unit_word("/etc/kernelfence/a%b/seccomp.bpf") == "/etc/kernelfence/a%%b/seccomp.bpf"
    assert unit_word('exec "$@" 9<"$0"') == "'exec \"$$@\" 9<\"$$0\"'"
    with pytest.raises(ValueError, match="cannot quote"):
        unit_word("it's")


def test_257_starts_the_command_itself(records):
    for name, rec in records.items():
        assert exec_lines(rec, 257) == [("ExecStart", rec["command"])], name


def test_syscall_allow_and_deny_on_separate_lines(records):
    for version in (252, 257):
        filters = as_dict(service_directives(records["executor"], version))["SystemCallFilter"]
        assert len(filters) == (2 if version >= 257 else 3)
        assert not any("~" in word for word in filters[0].split()), "allow line has no deny"
        assert filters[1].startswith("~") and filters[1].count("~") == 1
        assert "@privileged" in filters[1] and "@mount" in filters[1]
        if version < 257:
            # The wrapper's own set-up calls are added back individually, after the deny line.
            assert "~" not in filters[2] and "pivot_root" in filters[2].split()


def test_profiles_relax_only_documented_things(records):
    model = as_dict(service_directives(records["model_backend"], 257))
    assert model["PrivateNetwork"] == ["yes"]
    assert model["RestrictAddressFamilies"] == ["AF_UNIX"]
    executor = as_dict(service_directives(records["executor"], 257))
    assert "PrivateNetwork" not in executor
    assert executor["IPAddressDeny"] == ["any"] and executor["IPAddressAllow"] == ["127.0.0.1"]
    assert executor["RestrictAddressFamilies"] == ["AF_INET AF_UNIX"]
    for unit in (model, executor):
        assert unit["CapabilityBoundingSet"] == [""] and unit["AmbientCapabilities"] == [""]
        assert unit["NoNewPrivileges"] == ["yes"] and unit["UMask"] == ["0077"]


def test_model_backend_never_gets_network_even_if_asked():
    rec = normalize_components([{"name": "model_backend", "profile": "model_backend",
                                 "network": {"egress": [{"host": "::1", "port": 1}]}}])[0]
    assert as_dict(service_directives(rec, 257))["PrivateNetwork"] == ["yes"]


def test_capabilities_bounding_and_ambient_only_when_asked():
    rec = normalize_components([{"name": "web", "profile": "custom",
                                 "capabilities": ["net_bind_service"]}])[0]
    unit = as_dict(service_directives(rec, 257))
    assert unit["CapabilityBoundingSet"] == ["CAP_NET_BIND_SERVICE"]
    assert unit["AmbientCapabilities"] == [""]
    rec["ambient_capabilities"] = True
    assert as_dict(service_directives(rec, 257))["AmbientCapabilities"] == ["CAP_NET_BIND_SERVICE"]


def test_credentials_and_socket_clients(records):
    rec = records["orchestrator"]
    orch = as_dict(service_directives(rec, 257, rec["client_of"]))
    assert orch["LoadCredential"] == [
        "signing.key:/etc/kernelfence/secrets/orchestrator-signing.key"]
    assert orch["SupplementaryGroups"] == ["kf-executor-clients kf-model-backend-clients"]


def test_thresholds():
    assert threshold("model_backend", 257, bounded_scratch=False) == 0.5
    assert threshold("executor", 257, bounded_scratch=False) == 1.0
    assert threshold("executor", 252, bounded_scratch=False) == 1.9
    # Every rendered unit has the size-bounded scratch space: its scorer cost is allowed.
    assert threshold("model_backend", 257) == 0.7
    assert threshold("executor", 257) == 1.2
    assert threshold("executor", 252) == 2.1


def test_the_bounded_scratch_space_costs_exactly_its_allowance(records, tmp_path):
    """PrivateTmp=no with the sized tmpfs mounts, scored by the real systemd-analyze against
    the same unit with PrivateTmp=yes and no mounts: the difference is SCRATCH_EXPOSURE."""
    for name in ("orchestrator", "executor", "model_backend"):
        rec = records[name]
        bare = {k: v for k, v in rec.items() if k != "resources"}
        scores = []
        for variant, r in (("bounded", rec), ("private-tmp", bare)):
            path = tmp_path / variant / f"kf-{name}.service"
            path.parent.mkdir(exist_ok=True)
            path.write_text(without_pid_namespace(render(r, 257)))
            scores.append(offline_exposure(path))
        assert "PrivateTmp=no" in render(rec, 257)
        assert "TemporaryFileSystem=/tmp:rw,nosuid,nodev,mode=1777,size=" in render(rec, 257)
        assert round(scores[0] - scores[1], 1) == SCRATCH_EXPOSURE, (name, scores)


def test_real_systemd_accepts_every_line_of_the_252_rendering(records, tmp_path, host_systemd):
    version = host_systemd
    files = []
    for name, rec in records.items():
        path = tmp_path / f"kf-{name}.service"
        path.write_text(render(rec, version))
        files.append(str(path))
    proc = subprocess.run(["systemd-analyze", "verify", "--man=no", *files],
                          capture_output=True, text=True, check=False)
    ignored = [f for f in parse_verify(proc.stderr, files) if f["kind"] != "warning"]
    assert ignored == []
    if version < 257:
        # Control: the 257 rendering is refused here, so the check can fail.
        newer = tmp_path / "kf-newer.service"
        newer.write_text(render(records["executor"], 257))
        proc = subprocess.run(["systemd-analyze", "verify", "--man=no", str(newer)],
                              capture_output=True, text=True, check=False)
        kinds = {f["kind"] for f in parse_verify(proc.stderr, [str(newer)])}
        assert "unknown-directive" in kinds


def offline_exposure(path):
    """Overall exposure of a unit file, scored by this host's systemd-analyze (offline) and
    read by the parser the unit gate uses (unit_install.verify_and_score)."""
    argv = ["systemd-analyze", "security", "--no-pager", "--offline=yes"]
    text, as_json = (subprocess.run([*argv, *extra, str(path)], capture_output=True, text=True,
                                    check=False).stdout for extra in ([], ["--json=short"]))
    return parse_security(text, as_json)["exposure"]


def without_pid_namespace(text):
    return "\n".join(line for line in text.splitlines() if line != "PrivatePIDs=yes") + "\n"


def test_what_a_pid_namespace_costs_in_exposure_on_systemd_252(records, tmp_path,
                                                               host_systemd):
    """Why the wrapper allowance exists (docs/confinement.md), scored by real systemd 252.

    - The 257 rendering without PrivatePIDs= (no PID namespace) meets every profile target.
    - The least any unprivileged wrapper can ask for, creating a user and a PID namespace and
      nothing else, already puts the executor above its 1.0: on 252 a PID namespace and the
      executor's target cannot both be had.
    - The rendering we ship stays within the target plus the documented allowance.
    """
    version = host_systemd
    if version >= 257:
        # Only on a controller whose systemd-analyze knows PrivatePIDs=: the 252 rendering
        # cannot be scored there. The CI machine (Debian 12, systemd 252) always runs it.
        pytest.skip(f"systemd {version} has PrivatePIDs=: no wrapper allowance to measure")
    scores = {}
    for name in ("orchestrator", "executor", "model_backend"):
        rec = records[name]
        bare = without_pid_namespace(render(rec, 257))
        minimal = bare.replace("RestrictNamespaces=yes", "RestrictNamespaces=user pid")
        assert minimal != bare
        for variant, text in (("none", bare), ("minimal", minimal),
                              ("shipped", render(rec, 252))):
            path = tmp_path / variant / f"kf-{name}.service"
            path.parent.mkdir(exist_ok=True)
            path.write_text(text)
            scores[name, variant] = offline_exposure(path)
        target = threshold(rec["profile"], 257)
        assert scores[name, "none"] <= target, scores
        assert scores[name, "none"] < scores[name, "minimal"] <= scores[name, "shipped"], scores
        assert scores[name, "shipped"] <= threshold(rec["profile"], version), scores
    assert scores["executor", "minimal"] > threshold("executor", 257), scores


def test_granted_capabilities_are_not_voided_by_a_user_namespace(tmp_path, host_systemd):
    """A capability under PrivateUsers=yes exists only in the unit's own user namespace: the
    unit gate refuses that pairing, so the pipeline renders PrivateUsers=no when it grants one."""
    from ansible_collections.kernelfence.isolation.plugins.module_utils.systemd_analyze import (
        systemd_features,
        unenforced_directives,
    )
    features = systemd_features((Path(__file__).parent / "fixtures/systemd_analyze"
                                 / "systemctl-version-257.txt").read_text())
    rec = normalize_components([{"name": "web", "profile": "custom",
                                 "command": "/opt/kernelfence/bin/web",
                                 "capabilities": ["net_bind_service"],
                                 "ambient_capabilities": True}])[0]
    plain = normalize_components([{"name": "web", "profile": "custom"}])[0]
    assert as_dict(service_directives(rec, 257))["PrivateUsers"] == ["no"]
    assert as_dict(service_directives(plain, 257))["PrivateUsers"] == ["yes"]
    rendered = [("/kf-web.service", render(rec, 257))]
    assert unenforced_directives(rendered, features) == []
    # Scored by the host's systemd, the relaxation stays within the profile's target.
    path = tmp_path / "kf-web.service"
    path.write_text(render(rec, host_systemd))
    assert offline_exposure(path) <= threshold("custom", host_systemd)
