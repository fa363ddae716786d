#!/usr/bin/python
# Copyright: (c) 2026, kernelfence contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: artifact_verify
short_description: Verify signed component artifacts on the controller and install them atomically
version_added: "0.2.0"
description:
  - The action plugin verifies every artifact's Sigstore signature on the controller, before
    anything is copied, with the real C(cosign verify-blob) when it is on the controller's
    C(PATH), otherwise in Python (C(cryptography) for a cosign key, C(sigstore) for a keyless
    bundle). Both paths refuse the same artifacts with the same messages.
  - Key-based, a cosign public key with a detached signature or a bundle; keyless, a Sigstore
    bundle checked against the expected certificate identity (exact or regular expression),
    OIDC issuer and a user-supplied trusted root, offline.
  - Each verified file is copied with its sha256 pinned; on the host the copy must hash to the
    pin, is written into a new root-owned version directory, and C(current) is renamed to point
    at it only when every artifact of the call is in place. The version C(current) pointed at
    before stays, linked as C(previous).
  - Next to each binary, its CycloneDX SBOM (C(sbom.cdx.json)) and the verification evidence
    (C(evidence.json)); under O(install_root), C(inventory.json) lists every component binary
    with its verified digest.
  - Any failure (tampered file, wrong key, wrong identity or issuer, bundle of another file,
    missing signature, a trusted root that is not one, lacks the bundle's log, or whose CA,
    transparency-log or CT-log entry was not valid (C(validFor)) at the signing time, digest
    mismatch on the host) fails the task with a message naming the artifact and the reason,
    and leaves C(current) and the running services as they were.
author: kernelfence contributors (@kernelfence)
attributes:
  check_mode:
    description: Verifies on the controller and reports what would be installed; writes nothing.
    support: full
  diff_mode:
    description: Binary content is not diffed; the result lists what changes.
    support: none
  platform:
    description: POSIX hosts; the action plugin runs on the controller.
    support: full
    platforms: posix
  action:
    description: Verification and the file transfer happen in the action plugin.
    support: full
options:
  artifacts:
    description:
      - Artifacts to verify (and install unless O(install=false)), as the component model
        records them (C(component), C(name), C(src), C(version), C(key), C(signature),
        C(bundle), C(certificate_identity), C(certificate_identity_regexp),
        C(certificate_oidc_issuer), C(trusted_root), C(sha256), C(sbom)).
      - An artifact without C(key) is verified keyless and needs C(bundle),
        C(certificate_oidc_issuer), C(trusted_root) and either C(certificate_identity) or a
        C(certificate_identity_regexp) that is not empty and does not match an empty identity
        (such an expression admits every signer of the trusted root); C(key) excludes the keyless
        fields. Otherwise the task fails before verifying anything, naming the option
        (for example C(artifacts[0].certificate_identity_regexp)).
      - Ignored when O(verified) is given.
    type: list
    elements: dict
    default: []
  verified:
    description:
      - The RV(artifacts) returned by an earlier O(install=false) call (typically C(run_once)),
        so that verification runs once per play, not once per host. Each file is hashed
        again on the controller and must still match its verified digest.
    type: list
    elements: dict
  install:
    description: Install on the host after verification; C(false) only verifies.
    type: bool
    default: true
  backend:
    description: C(cosign), C(python), or C(auto) (cosign when it is on the controller).
    type: str
    choices: [auto, cosign, python]
    default: auto
  cosign:
    description: Path of C(cosign) on the controller; default, the one on C(PATH).
    type: path
  syft:
    description: Path of C(syft) on the controller for SBOMs; default, the one on C(PATH).
    type: path
  install_root:
    description: Root of the installed binaries (root-owned, not writable by any component).
    type: path
    default: /opt/kernelfence/bin
  recheck_on_host:
    description:
      - Verify the signature again on the host with the staged copy (key-based artifacts,
        needs C(python3-cryptography) on the host), for pull-based set-ups.
    type: bool
    default: false
  items:
    description:
      - Internal, set by the action plugin. The verified artifacts with their staged copies.
    type: list
    elements: dict
notes:
  - The host side of this module is an internal implementation detail of the action plugin;
    call it only through the action (the task name C(kernelfence.isolation.artifact_verify)).
"""

EXAMPLES = r"""
- name: Verify every artifact once, on the controller
  kernelfence.isolation.artifact_verify:
    artifacts:
      - component: executor
        name: cargo-audit
        version: 0.22.2
        src: /srv/release/cargo-audit
        key: /srv/release/cosign.pub
        bundle: /srv/release/cargo-audit.bundle
    install: false
  run_once: true
  register: verified

- name: Install them on every host
  kernelfence.isolation.artifact_verify:
    verified: "{{ verified.artifacts }}"
"""

RETURN = r"""
artifacts:
  description: Every verified artifact with its pinned digest, evidence and SBOM.
  returned: always
  type: list
  elements: dict
installed:
  description: Artifacts (C(component/name)) whose C(current) link was switched by this run.
  returned: when installing
  type: list
  elements: str
  sample: [executor/cargo-audit]
components:
  description: Components with at least one newly installed artifact (to restart).
  returned: when installing
  type: list
  elements: str
  sample: [executor]
previous:
  description: The version directory each switched artifact's C(current) pointed at before.
  returned: when installing
  type: dict
inventory:
  description: Path of the host-level inventory.
  returned: when installing
  type: str
  sample: /opt/kernelfence/bin/inventory.json
"""

import os

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.kernelfence.isolation.plugins.module_utils.artifact_verify import (
    Artifact,
    VerificationFailed,
    artifact_argument_errors,
    verify_with_python,
)
from ansible_collections.kernelfence.isolation.plugins.module_utils.verified_install import (
    INVENTORY,
    InstallFailed,
    Item,
    install,
)


def _recheck(module: AnsibleModule, items: list[dict]) -> None:
    """Verify the staged copies' signatures on the host itself (key-based only)."""
    tmpdir = module.tmpdir
    for raw in items:
        if not raw.get("staged"):
            continue
        recheck = raw.get("recheck") or {}
        if not recheck.get("key_pem"):
            module.fail_json(msg=f"artifact {raw['component']}/{raw['name']}: the on-host "
                             "re-check supports key-based artifacts only")
        paths = {}
        for field in ("key_pem", "signature", "bundle"):
            if recheck.get(field):
                paths[field] = os.path.join(tmpdir, f"{raw['name']}.{field}")
                with open(paths[field], "w", encoding="utf-8") as handle:
                    handle.write(recheck[field])
        art = Artifact(component=raw["component"], name=raw["name"], src=raw["staged"],
                       key=paths["key_pem"], signature=paths.get("signature"),
                       bundle=paths.get("bundle"), sha256=raw["sha256"])
        verify_with_python(art)


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "artifacts": {"type": "list", "elements": "dict", "default": []},
            "verified": {"type": "list", "elements": "dict"},
            "install": {"type": "bool", "default": True},
            "backend": {"type": "str", "choices": ["auto", "cosign", "python"],
                        "default": "auto"},
            "cosign": {"type": "path"},
            "syft": {"type": "path"},
            "install_root": {"type": "path", "default": "/opt/kernelfence/bin"},
            "recheck_on_host": {"type": "bool", "default": False},
            "items": {"type": "list", "elements": "dict"},
        },
        supports_check_mode=True,
    )
    errors = artifact_argument_errors(module.params["artifacts"])
    if errors:
        module.fail_json(msg="invalid artifacts: " + "; ".join(errors), errors=errors)
    root = module.params["install_root"]
    raw_items = module.params["items"]
    if raw_items is None:
        module.fail_json(msg="call kernelfence.isolation.artifact_verify as a task: its action "
                         "plugin verifies on the controller and stages the files")
    try:
        if module.params["recheck_on_host"] and not module.check_mode:
            _recheck(module, raw_items)
        result = install(root, [Item.from_dict(i) for i in raw_items], module.check_mode)
    except (InstallFailed, VerificationFailed) as exc:
        module.fail_json(msg=str(exc))
    except OSError as exc:
        module.fail_json(msg=f"installing under {root} failed: {exc}")
    components = sorted({label.split("/")[0] for label in result["installed"]})
    module.exit_json(changed=result["changed"], installed=result["installed"],
                     needs_staging=result["needs_staging"], previous=result["previous"],
                     components=components, inventory=os.path.join(root, INVENTORY))


if __name__ == "__main__":
    main()
