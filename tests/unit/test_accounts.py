"""Planning of the component accounts, on account databases recorded from a Debian 12 guest."""

from pathlib import Path

import pytest
import yaml
from ansible_collections.kernelfence.isolation.plugins.module_utils.accounts import (
    describe,
    plan,
)

FIX = Path(__file__).parent / "fixtures/accounts"
CASES = yaml.safe_load((FIX / "cases.yml").read_text())


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_plan(case):
    stats = {path: tuple(v) for path, v in (case.get("stat") or {}).items()}
    actions = plan(case.get("groups", []), case.get("users", []), case.get("directories", []),
                   (FIX / "passwd").read_text(), (FIX / "group").read_text(),
                   (FIX / "shadow").read_text(), stats.get)
    assert [describe(a) for a in actions] == case["expect"]
