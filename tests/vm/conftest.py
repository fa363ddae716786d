"""Shared fixtures of the VM scenarios: the component records the play deployed."""

import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / ".collections"))

from ansible_collections.kernelfence.isolation.plugins.module_utils.component_model import (  # noqa: E402
    normalize_components,
)

# Expected systemd major version per scenario instance (see molecule/*/molecule.yml).
SYSTEMD_BY_INSTANCE = {"kf12": 252, "kf13": 257}


@pytest.fixture(scope="session")
def components():
    data = yaml.safe_load(
        (REPO / "inventory/example/group_vars/kernelfence/components.yml").read_text())
    return normalize_components(data["kernelfence_components"])


def as_user(host, user, code):
    """Run Python as a component user (runuser: their shell is nologin) and return its stdout."""
    cmd = host.run("runuser -u %s -- python3 -c %s", user, code)
    assert cmd.rc == 0, cmd.stderr
    return cmd.stdout.strip()


def listdir_errno(host, user, path):
    """'OK' when the user can list path, else the errno name the kernel returned."""
    code = ("import errno, os\n"
            f"try:\n    os.listdir({path!r})\n    print('OK')\n"
            "except OSError as e:\n    print(errno.errorcode[e.errno])")
    return as_user(host, user, code)
