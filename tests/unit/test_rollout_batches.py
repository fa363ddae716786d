"""site.yml's batch keywords, run by the real ansible-playbook over five local hosts: the canary
fails, so no later batch starts; with a wider failure budget the rollout goes on."""

import os
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
SITE = yaml.safe_load((REPO / "playbooks/site.yml").read_text())[0]


def run(tmp_path, *extra):
    play = {"name": "batches", "hosts": "all", "gather_facts": False,
            "serial": SITE["serial"], "max_fail_percentage": SITE["max_fail_percentage"],
            "tasks": [{"name": "batch",
                       "ansible.builtin.debug": {"msg": "{{ ansible_play_batch }}"}},
                      {"name": "break the first host", "ansible.builtin.fail": {"msg": "boom"},
                       "when": "inventory_hostname == 'h1'"}]}
    (tmp_path / "play.yml").write_text(yaml.safe_dump([play]))
    env = dict(os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_STDOUT_CALLBACK="default",
               ANSIBLE_LOCALHOST_WARNING="0", ANSIBLE_INVENTORY_UNPARSED_WARNING="0")
    bindir = Path(sys.executable).parent
    proc = subprocess.run(
        [str(bindir / "ansible-playbook"), "-i", "h1,h2,h3,h4,h5,", "-c", "local",
         "-e", f"ansible_python_interpreter={sys.executable}", *extra, str(tmp_path / "play.yml")],
        capture_output=True, text=True, env=env, timeout=300, check=False)
    ran = {line.split()[0] for line in proc.stdout.splitlines() if line.startswith("h")
           and "ok=" in line}
    return proc.returncode, ran, proc.stdout


def test_a_failing_canary_stops_the_rollout(tmp_path):
    rc, ran, out = run(tmp_path)
    assert rc == 2, out
    assert ran == {"h1"}, out  # h2..h5 never started
    assert "NO MORE HOSTS LEFT" in out


def test_batch_size_and_failure_budget_come_from_extra_vars(tmp_path):
    rc, ran, out = run(tmp_path, "-e", "kernelfence_serial=2",
                       "-e", "kernelfence_max_fail_percentage=50")
    assert rc == 2, out  # h1 still failed
    assert ran == {"h1", "h2", "h3", "h4", "h5"}, out  # but the others went on, in pairs
    assert out.count("TASK [batch]") == 3, out  # batches h1 h2 | h3 h4 | h5
