# Copyright: (c) 2026, kernelfence contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Atomic, root-owned installation of verified artifacts on a host.

Layout, for every artifact of every component::

    <root>/<component>/<name>/<version>-<sha256[:12]>/<name>          the binary (0755 root)
    <root>/<component>/<name>/<version>-<sha256[:12]>/sbom.cdx.json   its CycloneDX SBOM
    <root>/<component>/<name>/<version>-<sha256[:12]>/evidence.json   how it was verified
    <root>/<component>/<name>/current  -> <version>-<sha256[:12]>     renamed into place
    <root>/<component>/<name>/previous -> the version current pointed at before
    <root>/inventory.json                                             every binary and digest

Nothing is switched until every staged copy of the run matches its pinned digest and every new
version directory is complete; a failure leaves ``current`` (and so the running service) alone.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass

INVENTORY = "inventory.json"
# Components whose binary was switched and whose service has not restarted on it yet, one empty
# file each (written by the artifact_verify module, removed by the verified_binary handler).
PENDING_DIR = "/run/kernelfence-pending/artifact_verify"
_CHUNK = 1 << 20


class InstallFailed(Exception):
    """An artifact could not be installed; the message names the artifact and the reason."""


def sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def version_dir_name(version: str | None, sha256: str) -> str:
    return f"{version}-{sha256[:12]}" if version else sha256[:16]


@dataclass
class Item:
    """One verified artifact for this host: where it goes and what it must hash to."""

    component: str
    name: str
    sha256: str
    version: str | None = None
    staged: str | None = None
    sbom: dict | None = None
    evidence: dict | None = None

    @property
    def label(self) -> str:
        return f"{self.component}/{self.name}"

    def base(self, root: str) -> str:
        return os.path.join(root, self.component, self.name)

    def vdir(self, root: str) -> str:
        return os.path.join(self.base(root), version_dir_name(self.version, self.sha256))

    @classmethod
    def from_dict(cls, data: dict) -> Item:
        return cls(component=str(data["component"]), name=str(data["name"]),
                   sha256=str(data["sha256"]).removeprefix("sha256:"),
                   version=None if data.get("version") is None else str(data["version"]),
                   staged=data.get("staged"), sbom=data.get("sbom"),
                   evidence=data.get("evidence"))


def _readlink(path: str) -> str | None:
    try:
        return os.readlink(path)
    except OSError:
        return None


def is_current(root: str, item: Item) -> bool:
    """True when ``current`` points at this version and its file still has the pinned digest."""
    base = item.base(root)
    target = version_dir_name(item.version, item.sha256)
    if _readlink(os.path.join(base, "current")) != target:
        return False
    path = os.path.join(base, target, item.name)
    try:
        return (os.path.isfile(path) and not os.path.islink(path)
                and sha256_file(path) == item.sha256)
    except OSError:
        return False


def is_intact(root: str, item: Item) -> bool:
    """True when the item's version directory holds the file at its pinned digest."""
    path = os.path.join(item.vdir(root), item.name)
    try:
        return (os.path.isfile(path) and not os.path.islink(path)
                and sha256_file(path) == item.sha256)
    except OSError:
        return False


def check_staged(items: list[Item]) -> None:
    """Every staged copy must hash to the digest verified on the controller."""
    for item in items:
        if item.staged is None:
            raise InstallFailed(f"artifact {item.label}: not staged on the host")
        actual = sha256_file(item.staged)
        if actual != item.sha256:
            raise InstallFailed(
                f"artifact {item.label}: digest mismatch: the copy on the host has sha256 "
                f"{actual}, the verified pin is {item.sha256}")


def _write_json(path: str, data: dict) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=2, sort_keys=True)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def _mkdirs(path: str) -> None:
    os.makedirs(path, mode=0o755, exist_ok=True)
    os.chmod(path, 0o755)
    os.chown(path, 0, 0)


def _build_version_dir(root: str, item: Item) -> str:
    """Copy the staged file and its records into a fresh directory, then rename it into place."""
    base = item.base(root)
    final = item.vdir(root)
    tmp = os.path.join(base, f".{os.path.basename(final)}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    os.mkdir(tmp, 0o755)
    target = os.path.join(tmp, item.name)
    with open(str(item.staged), "rb") as src, open(target, "wb") as dst:
        shutil.copyfileobj(src, dst, _CHUNK)
        dst.flush()
        os.fsync(dst.fileno())
    os.chmod(target, 0o755)
    if sha256_file(target) != item.sha256:
        shutil.rmtree(tmp, ignore_errors=True)
        raise InstallFailed(f"artifact {item.label}: digest mismatch: the copy written to "
                            f"{final} does not hash to the verified pin {item.sha256}")
    if item.sbom is not None:
        _write_json(os.path.join(tmp, "sbom.cdx.json"), item.sbom)
    if item.evidence is not None:
        _write_json(os.path.join(tmp, "evidence.json"), item.evidence)
    for entry in os.listdir(tmp):
        os.chown(os.path.join(tmp, entry), 0, 0)
    os.chown(tmp, 0, 0)
    if os.path.lexists(final):
        shutil.rmtree(final)
    os.rename(tmp, final)
    return final


def _switch_link(base: str, link: str, target: str) -> None:
    tmp = os.path.join(base, f".{link}.tmp-{os.getpid()}")
    if os.path.lexists(tmp):
        os.unlink(tmp)
    os.symlink(target, tmp)
    os.replace(tmp, os.path.join(base, link))


def _prune(base: str) -> list[str]:
    keep = {_readlink(os.path.join(base, "current")), _readlink(os.path.join(base, "previous")),
            "current", "previous"}
    removed = []
    for entry in sorted(os.listdir(base)):
        if entry not in keep:
            shutil.rmtree(os.path.join(base, entry), ignore_errors=True)
            removed.append(entry)
    return removed


def plan(root: str, items: list[Item]) -> list[str]:
    """Labels of the artifacts that are not installed at their pinned digest yet."""
    return [item.label for item in items if not is_current(root, item)]


def _evidence(vdir: str) -> dict:
    try:
        with open(os.path.join(vdir, "evidence.json"), encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return {}


def _entry(base: str, component: str, name: str, version: str | None, sha256: str,
           vdir: str, evidence: dict) -> dict:
    """One binary of the inventory: what `current` points at, its SBOM and evidence."""
    previous = _readlink(os.path.join(base, "previous"))
    return {
        "component": component, "name": name, "version": version, "sha256": sha256,
        "path": os.path.join(base, "current", name),
        "installed": os.path.join(vdir, name),
        "sbom": os.path.join(vdir, "sbom.cdx.json"),
        "evidence": os.path.join(vdir, "evidence.json"),
        "verified_at": evidence.get("verified_at"),
        "verified_by": evidence.get("tool"),
        "signer": evidence.get("signer_identity") or evidence.get("key_fingerprint"),
        "previous": os.path.join(base, previous) if previous else None,
    }


def inventory(root: str, items: list[Item]) -> dict:
    """The host's list of component binaries, read back from what is installed."""
    binaries = []
    for item in items:
        base = item.base(root)
        vdir = os.path.join(base, _readlink(os.path.join(base, "current")) or "")
        binaries.append(_entry(base, item.component, item.name, item.version, item.sha256,
                               vdir, _evidence(vdir)))
    return {"kernelfence_inventory": 1,
            "binaries": sorted(binaries, key=lambda b: (b["component"], b["name"]))}


def refresh_inventory(root: str) -> bool:
    """Re-read every binary of inventory.json from the version ``current`` points at now.

    A health check that rolls a binary back moves ``current`` without knowing the model's
    artifacts: the inventory must then show the digest, version and evidence of the version
    that runs, not of the one that was rolled back. Returns whether the file changed.
    """
    path = os.path.join(root, INVENTORY)
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, ValueError):
        return False
    changed = False
    for entry in data.get("binaries", []):
        base = os.path.dirname(os.path.dirname(entry["path"]))
        vname = _readlink(os.path.join(base, "current"))
        if not vname:
            continue
        vdir = os.path.join(base, vname)
        evidence = _evidence(vdir)
        sha256 = evidence.get("sha256") or sha256_file(os.path.join(vdir, entry["name"]))
        suffix = f"-{sha256[:12]}"
        version = vname[: -len(suffix)] if vname.endswith(suffix) else None
        fresh = {**entry, **_entry(base, entry["component"], entry["name"], version, sha256,
                                   vdir, evidence)}
        if fresh != entry:
            entry.update(fresh)
            changed = True
    if changed:
        _write_json(path, data)
        os.chown(path, 0, 0)
    return changed


def write_inventory(root: str, items: list[Item], check_mode: bool) -> bool:
    data = inventory(root, items)
    path = os.path.join(root, INVENTORY)
    try:
        with open(path, encoding="utf-8") as handle:
            if json.load(handle) == data:
                return False
    except (OSError, ValueError):
        pass
    if not check_mode:
        _write_json(path, data)
        os.chown(path, 0, 0)
    return True


def install(root: str, items: list[Item], check_mode: bool = False) -> dict:
    """Install every item not yet current; switch ``current`` only once all are in place.

    Returns {changed, installed: [labels], previous: {label: dir}, needs_staging: [labels]}.
    Items that are already current need no staged copy.
    """
    pending = [item for item in items if not is_current(root, item)]
    # A version still on disk intact (e.g. the previous one, for a rollback) is not copied again.
    needed = [item for item in pending if not is_intact(root, item)]
    result: dict = {"changed": False, "installed": [], "previous": {}, "needs_staging": []}
    if pending and (check_mode or any(item.staged is None for item in needed)):
        result["needs_staging"] = [item.label for item in needed]
        result["changed"] = True
        if check_mode:
            result["installed"] = [item.label for item in pending]
        return result
    check_staged(needed)
    created: list[str] = []
    if pending:
        _mkdirs(root)
    try:
        for item in needed:
            _mkdirs(os.path.join(root, item.component))
            _mkdirs(item.base(root))
            created.append(_build_version_dir(root, item))
    except (OSError, InstallFailed):
        for path in created:
            if all(_readlink(os.path.join(os.path.dirname(path), link)) !=
                   os.path.basename(path) for link in ("current", "previous")):
                shutil.rmtree(path, ignore_errors=True)
        raise
    for item in pending:
        base = item.base(root)
        target = version_dir_name(item.version, item.sha256)
        old = _readlink(os.path.join(base, "current"))
        if old and old != target:
            _switch_link(base, "previous", old)
            result["previous"][item.label] = os.path.join(base, old)
        _switch_link(base, "current", target)
        _prune(base)
        result["installed"].append(item.label)
    result["changed"] = bool(pending)
    if write_inventory(root, items, check_mode):
        result["changed"] = True
    return result
