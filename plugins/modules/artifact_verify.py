#!/usr/bin/python
# Copyright: (c) 2026, kernelfence contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: artifact_verify
short_description: Verify signed component artifacts on the controller and install them atomically
version_added: "0.1.0"
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
requirements:
  - "On the controller: C(cryptography) (C(pip install cryptography)) and C(cyclonedx-python-lib)
    with its C(json-validation) extra (C(pip install 'cyclonedx-python-lib[json-validation]'))."
  - "On the controller, for keyless artifacts verified in Python (O(backend=python), or
    O(backend=auto) without C(cosign) on the controller): C(sigstore) (C(pip install sigstore))."
  - "On the target, only with O(recheck_on_host=true): C(python3-cryptography)
    (C(apt-get install python3-cryptography))."
  - A missing one fails the task before anything is verified or copied, naming the library and
    the command that installs it.
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
  pending_dir:
    description:
      - Internal. Directory of the markers of components whose binary was switched and whose
        service has not been restarted on it yet. A marker is written when C(current) moves and
        removed by the role's handler after the restart; while one is left, every run reports
        the component in RV(components) (and C(changed)), so a restart lost to a failed run is
        done by the next one. Under C(/run) because a boot starts every service on C(current).
    type: path
    default: /run/kernelfence-pending/artifact_verify
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
  description:
    - Artifacts (C(component/name)) whose C(current) link was switched by this run.
    - On a failure after some links were switched (the task then reports C(changed)), those.
  returned: when installing
  type: list
  elements: str
  sample: [executor/cargo-audit]
components:
  description: Components with at least one newly installed artifact (to restart), also on a
    failure after the switch, and those of RV(restart_owed).
  returned: when installing
  type: list
  elements: str
  sample: [executor]
restart_owed:
  description: Components whose binary an earlier run switched without the restart that
    follows (see O(pending_dir)); they are in RV(components) too.
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
missing_libraries:
  description: The Python libraries the task needs and could not import (see requirements).
  returned: when one is missing
  type: list
  elements: str
  sample: [sigstore]
"""

import os
import traceback

from ansible.module_utils.basic import AnsibleModule, missing_required_lib
from ansible_collections.kernelfence.isolation.plugins.module_utils.artifact_verify import (
    Artifact,
    VerificationFailed,
    artifact_argument_errors,
    verify_with_python,
)
from ansible_collections.kernelfence.isolation.plugins.module_utils.verified_install import (
    INVENTORY,
    PENDING_DIR,
    InstallFailed,
    Item,
    install,
)

try:
    import cryptography  # noqa: F401  # pylint: disable=unused-import
except ImportError:
    HAS_CRYPTOGRAPHY = False
    CRYPTOGRAPHY_IMPORT_ERROR: str | None = traceback.format_exc()
else:
    HAS_CRYPTOGRAPHY = True
    CRYPTOGRAPHY_IMPORT_ERROR = None


def _components(labels: list[str]) -> list[str]:
    return sorted({label.split("/")[0] for label in labels})


def _mark(pending_dir: str, components: list[str]) -> None:
    """Note the components whose service must restart on the switched binary."""
    if components:
        os.makedirs(pending_dir, mode=0o700, exist_ok=True)
    for component in components:
        with open(os.path.join(pending_dir, component), "w", encoding="utf-8"):
            pass


def _owed(pending_dir: str) -> list[str]:
    try:
        return sorted(os.listdir(pending_dir))
    except FileNotFoundError:
        return []


def _current(root: str, item: Item) -> str | None:
    """The version directory the artifact's ``current`` link names now."""
    try:
        return os.readlink(os.path.join(item.base(root), "current"))
    except OSError:
        return None


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
            "pending_dir": {"type": "path", "default": PENDING_DIR},
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
    if module.params["recheck_on_host"] and not HAS_CRYPTOGRAPHY:
        module.fail_json(
            msg=missing_required_lib("cryptography", reason="to verify the signatures again on "
                                     "the host (recheck_on_host)")
            + ". Fix: apt-get install python3-cryptography on the target, or set "
            "recheck_on_host: false",
            missing_libraries=["cryptography"], exception=CRYPTOGRAPHY_IMPORT_ERROR)
    pending_dir = module.params["pending_dir"]
    items = [Item.from_dict(i) for i in raw_items]
    before = {item.label: _current(root, item) for item in items}
    try:
        if module.params["recheck_on_host"] and not module.check_mode:
            _recheck(module, raw_items)
        result = install(root, items, module.check_mode)
    except (InstallFailed, VerificationFailed, OSError) as exc:
        msg = str(exc) if not isinstance(exc, OSError) else f"installing under {root} failed: {exc}"
        # A failure after some `current` links moved (e.g. writing the inventory) changed the
        # host: say so, and which components now run a binary their service has not restarted on.
        switched = sorted(i.label for i in items if _current(root, i) != before[i.label])
        components = _components(switched)
        if not module.check_mode:
            _mark(pending_dir, components)
        module.fail_json(msg=msg, changed=bool(switched), installed=switched,
                         components=components)
    components = _components(result["installed"])
    if not module.check_mode and not result["needs_staging"]:
        _mark(pending_dir, components)
    # Switched by an earlier run whose restart did not happen (the play failed before it).
    owed = [c for c in _owed(pending_dir) if c in {i.component for i in items}]
    module.exit_json(changed=result["changed"] or bool(owed), installed=result["installed"],
                     needs_staging=result["needs_staging"], previous=result["previous"],
                     components=sorted({*components, *owed}), restart_owed=owed,
                     inventory=os.path.join(root, INVENTORY))


if __name__ == "__main__":
    main()
