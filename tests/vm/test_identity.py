"""Identity of each component, read from the guest, and proven by attempted access."""

import pytest
from conftest import SYSTEMD_BY_INSTANCE, listdir_errno


def test_guest_runs_the_expected_systemd(host):
    name = host.backend.get_hostname()
    assert host.run("readlink /proc/1/exe").stdout.strip().endswith("/systemd")
    version = int(host.run("systemctl --version").stdout.split()[1])
    assert version == SYSTEMD_BY_INSTANCE[name]


def test_component_users_are_dedicated_system_accounts(host, components):
    uids = set()
    for rec in components:
        user = host.user(rec["user"])
        assert user.exists, rec["user"]
        assert user.shell == "/usr/sbin/nologin"
        assert user.uid < 1000, "system account"
        assert user.group == rec["group"]
        assert user.groups == [rec["group"]], "no supplementary groups"
        assert user.password in ("!", "*", "!*"), "no usable password"
        uids.add(user.uid)
    assert len(uids) == len(components), "one uid per component"


def test_component_directories_are_least_privilege(host, components):
    for rec in components:
        state = host.file(rec["state_dir"])
        assert state.is_directory and state.user == rec["user"] and state.mode == 0o700
        config = host.file(rec["config_dir"])
        assert config.user == "root" and config.group == rec["group"] and config.mode == 0o750
        log = host.file(rec["log_dir"])
        assert log.user == rec["user"] and log.mode == 0o750


@pytest.mark.parametrize("intruder,victim", [("executor", "orchestrator"),
                                             ("executor", "model_backend"),
                                             ("model_backend", "orchestrator")])
def test_other_components_cannot_list_state(host, components, intruder, victim):
    recs = {r["name"]: r for r in components}
    # Control: the owner lists its own state directory, so the probe itself works.
    assert listdir_errno(host, recs[victim]["user"], recs[victim]["state_dir"]) == "OK"
    assert listdir_errno(host, recs[intruder]["user"], recs[victim]["state_dir"]) == "EACCES"
