"""The network policy role twice over one SSH connection (moved out of tests/vm: see README)."""

import copy
import subprocess
import time

from test_network_policy import EXAMPLE, REPO, _inventory_ssh, _playbook


def test_role_twice_over_the_same_connection_keeps_the_session(host, endpoints, tmp_path):
    """The role runs twice in one play (one SSH connection): first with an extra endpoint
    (the handler reloads the table and the executor reaches 8089), then with the model again
    (reloaded back: refused). A shell session opened before keeps ticking throughout."""
    session = subprocess.Popen(
        [*_inventory_ssh(host), "i=0; while [ $i -lt 900 ]; do echo $i; i=$((i+1)); sleep 1; done"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert session.stdout.readline().strip() == "0"  # control: the session is up
        began = time.monotonic()
        model = copy.deepcopy(EXAMPLE["kernelfence_components"])
        widened = copy.deepcopy(model)
        next(c for c in widened if c["name"] == "executor")["network"]["egress"].append(
            {"host": "127.0.0.1", "port": 8089})
        rc, out = _playbook(host, REPO / "tests/vm/playbooks/network_policy_twice.yml",
                            {"kf_test_model": model, "kf_test_widened": widened}, tmp_path)
        assert rc == 0, out[-4000:]
        assert out.count("Reload the kernelfence network policy]") == 2, out[-4000:]
        assert "WIDENED OK" in out, out[-4000:]
        assert "NARROWED EHOSTUNREACH" in out, out[-4000:]
        elapsed = time.monotonic() - began
        # The session lived through both reloads and still answers.
        ticks = [session.stdout.readline().strip() for _ in range(3)]
        assert session.poll() is None
        assert int(ticks[-1]) >= int(elapsed) - 5, (ticks, elapsed)
        print(f"SESSION {host.backend.get_hostname()} survived {elapsed:.0f} s, ticks {ticks}")
    finally:
        session.kill()
        session.wait()


