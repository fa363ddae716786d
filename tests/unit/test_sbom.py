"""SBOMs made for installed artifacts are valid CycloneDX (checked against the schema)."""

import json
import os
from pathlib import Path

import pytest
from ansible_collections.kernelfence.isolation.plugins.module_utils.sbom import (
    SbomError,
    _with_subject,
    minimal_sbom,
    syft_sbom,
    validation_errors,
    vendor_sbom,
)

SHA = "ab" * 32


def test_minimal_sbom_is_valid_cyclonedx_with_name_version_purl_and_hash():
    doc = minimal_sbom("cargo-audit", "0.22.2", SHA)
    assert validation_errors(doc) is None
    subject = doc["metadata"]["component"]
    assert subject["name"] == "cargo-audit" and subject["version"] == "0.22.2"
    assert subject["purl"] == "pkg:generic/cargo-audit@0.22.2"
    assert subject["hashes"] == [{"alg": "SHA-256", "content": SHA}]


def test_schema_validation_can_fail():
    doc = minimal_sbom("cargo-audit", "0.22.2", SHA)
    doc["metadata"]["component"]["hashes"][0]["alg"] = "SHA-257"
    assert validation_errors(doc) is not None


def test_subject_gets_the_verified_digest():
    doc = _with_subject({"bomFormat": "CycloneDX", "specVersion": "1.6", "version": 1,
                         "metadata": {"component": {"type": "file", "name": "x",
                                                    "hashes": [{"alg": "SHA-256",
                                                                "content": "00" * 32}]}}},
                        "cargo-audit", "0.22.2", SHA)
    assert doc["metadata"]["component"]["hashes"] == [{"alg": "SHA-256", "content": SHA}]
    assert validation_errors(doc) is None


def test_vendor_sbom_must_be_cyclonedx(tmp_path):
    spdx = tmp_path / "spdx.json"
    spdx.write_text(json.dumps({"spdxVersion": "SPDX-2.3"}))
    with pytest.raises(SbomError, match="is not a CycloneDX SBOM"):
        vendor_sbom(str(spdx))
    good = tmp_path / "bom.json"
    good.write_text(json.dumps(minimal_sbom("tool", None, SHA)))
    assert vendor_sbom(str(good))["bomFormat"] == "CycloneDX"


SYFT = str(Path(os.environ.get("KF_CACHE", Path.home() / ".cache/kernelfence")) / "tools/bin/syft")


# `./kf test` runs the unit stage after the pinned tools (syft among them) are built, so there
# this always runs; only a hand-run pytest without the tools skips it.
@pytest.mark.skipif(not os.access(SYFT, os.X_OK), reason=f"syft not built yet at {SYFT}")
def test_syft_sbom_is_valid_and_names_the_verified_digest(tmp_path):
    tool = tmp_path / "tool"
    tool.write_bytes(b"\x7fELF not really, but a file syft can catalogue\n")
    doc = syft_sbom(SYFT, str(tool), "tool", "1.0", SHA)
    assert doc["specVersion"] == "1.6"
    assert validation_errors(doc) is None
    subject = doc["metadata"]["component"]
    assert subject["name"] == "tool" and subject["version"] == "1.0"
    assert subject["purl"] == "pkg:generic/tool@1.0"
    assert {"alg": "SHA-256", "content": SHA} in subject["hashes"]
