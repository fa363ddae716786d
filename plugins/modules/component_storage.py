#!/usr/bin/python
# Copyright: (c) 2026, kernelfence contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: component_storage
short_description: Size-bounded file systems for the components' persistent writable paths
version_added: "0.1.0"
description:
  - For each path of O(mounts) (from the C(kernelfence.isolation.component_storage_mounts)
    filter), creates a per-path ext4 image of the given size (allocated up front with
    C(fallocate), so the host's free space drops by the image size once and never again),
    writes a C(.mount) unit that mounts it on the path through a loop device, enables and
    starts it, and gives the mounted root the component's owner, group and mode. Paths under
    C(/run) get a size-bounded tmpfs instead of an image.
  - Filling such a path ends in C(ENOSPC) for its component only; the other components and
    journald keep writing to the host's file system.
  - Files already in a path that is not yet bounded are copied into its new image before it is
    mounted. An image whose size differs from the model is not resized; the module fails and
    says how to resize.
author: kernelfence contributors (@kernelfence)
attributes:
  check_mode:
    description: Reports what it would create, write and mount; changes nothing.
    support: full
  diff_mode:
    description: The diff of every mount unit it writes.
    support: full
  platform:
    description: Linux targets with systemd and e2fsprogs (mkfs.ext4).
    support: full
    platforms: posix
options:
  mounts:
    description:
      - One entry per bounded path, as the C(component_storage_mounts) filter returns them
        (C(path), C(size), C(bytes), C(unit), C(type), C(image), C(owner), C(group), C(mode),
        C(component)).
    type: list
    elements: dict
    required: true
  unit_dir:
    description: Where the mount units are written.
    type: path
    default: /etc/systemd/system
"""

EXAMPLES = r"""
- name: Bound the components' writable space
  kernelfence.isolation.component_storage:
    mounts: "{{ __kernelfence_components | kernelfence.isolation.component_storage_mounts }}"
"""

RETURN = r"""
mounts:
  description: Per path, what was done (created image, wrote unit, started mount, copied files).
  returned: always
  type: list
  elements: dict
"""

import grp
import os
import pwd
import shutil
import tempfile

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.kernelfence.isolation.plugins.module_utils.resource_limits import (
    mount_unit,
)


def _mounted(path: str) -> bool:
    with open("/proc/self/mountinfo", encoding="utf-8") as handle:
        return any(line.split()[4] == path for line in handle)


def _run(module: AnsibleModule, argv: list[str]) -> str:
    rc, out, err = module.run_command(argv)
    if rc != 0:
        module.fail_json(msg=f"{' '.join(argv)} failed (rc {rc}): {err.strip()}", stdout=out,
                         stderr=err)
    return out


def _create_image(module: AnsibleModule, mount: dict, uid: int, gid: int) -> None:
    image = mount["image"]
    os.makedirs(os.path.dirname(image), mode=0o700, exist_ok=True)
    os.chmod(os.path.dirname(image), 0o700)
    fd = os.open(image + ".new", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.posix_fallocate(fd, 0, int(mount["bytes"]))
    except OSError as exc:
        os.close(fd)
        os.unlink(image + ".new")
        module.fail_json(msg=f"component {mount['component']}: cannot allocate {mount['size']} "
                             f"for {mount['path']} at {image}: {exc.strerror}. Fix: free that "
                             "much space on the host, or lower resources.state_size/log_size")
    os.close(fd)
    mkfs = module.get_bin_path("mkfs.ext4", required=True)
    _run(module, [mkfs, "-q", "-F", "-L", f"kf-{mount['component']}"[:16],
                  "-E", f"root_owner={uid}:{gid}", image + ".new"])
    os.rename(image + ".new", image)


def _copy_existing(module: AnsibleModule, mount: dict, image: str) -> bool:
    """Copy what the path holds into the new image (mounted on a private temporary directory)."""
    path = mount["path"]
    if not os.path.isdir(path) or not os.listdir(path):
        return False
    scratch = tempfile.mkdtemp(prefix="kf-storage-")
    try:
        _run(module, ["mount", "-o", "loop", image, scratch])
        try:
            _run(module, ["cp", "-a", "--", f"{path}/.", scratch])
        finally:
            _run(module, ["umount", scratch])
    finally:
        os.rmdir(scratch)
    return True


def _apply(module: AnsibleModule, mount: dict, unit_dir: str) -> dict:
    check = module.check_mode
    done = {"path": mount["path"], "unit": mount["unit"], "component": mount["component"],
            "size": mount["size"], "created_image": False, "wrote_unit": False,
            "started": False, "copied": False}
    try:
        uid = pwd.getpwnam(mount["owner"]).pw_uid
        gid = grp.getgrnam(mount["group"]).gr_gid
    except KeyError:
        if not check:
            module.fail_json(msg=f"component {mount['component']}: user {mount['owner']} or "
                                 f"group {mount['group']} does not exist. Fix: run the "
                                 "component_identity role first")
        uid = gid = 0
    image = mount.get("image")
    if image and os.path.exists(image):
        size = os.path.getsize(image)
        if size != int(mount["bytes"]):
            module.fail_json(msg=f"component {mount['component']}: the image {image} of "
                                 f"{mount['path']} has {size} bytes, the model asks "
                                 f"{mount['size']}. Fix: restore the size in resources, or stop "
                                 f"the component, copy the files out, `systemctl disable --now "
                                 f"{mount['unit']}`, remove the image and run again")
    elif image:
        done["created_image"] = True
        if not check:
            # The image takes its final name only once it holds the path's files: a failed
            # copy (more data than the size) leaves no image that a later run would mount
            # over the data as if it were complete.
            staged = image + ".staged"
            _create_image(module, {**mount, "image": staged}, uid, gid)
            try:
                done["copied"] = (not _mounted(mount["path"])
                                  and _copy_existing(module, mount, staged))
            except BaseException:
                if os.path.exists(staged):
                    os.unlink(staged)
                raise
            os.rename(staged, image)
    unit_path = os.path.join(unit_dir, mount["unit"])
    text = mount_unit(mount, uid, gid) if uid or gid else mount_unit(mount)
    try:
        with open(unit_path, encoding="utf-8") as handle:
            before = handle.read()
    except FileNotFoundError:
        before = ""
    if before != text:
        done["wrote_unit"] = True
        done["diff"] = {"before": before, "after": text, "before_header": unit_path,
                        "after_header": unit_path}
        if not check:
            fd, tmp = tempfile.mkstemp(dir=unit_dir, prefix=".kf-")
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(text)
            os.chmod(tmp, 0o644)
            module.atomic_move(tmp, unit_path)
    if not _mounted(mount["path"]):
        done["started"] = True
        if not check:
            os.makedirs(mount["path"], exist_ok=True)
            _run(module, ["systemctl", "daemon-reload"])
            _run(module, ["systemctl", "enable", "--now", mount["unit"]])
    if not check and _mounted(mount["path"]):
        st = os.stat(mount["path"])
        mode = int(mount["mode"], 8)
        if (st.st_uid, st.st_gid, st.st_mode & 0o7777) != (uid, gid, mode):
            os.chown(mount["path"], uid, gid)
            os.chmod(mount["path"], mode)
            done["owner_fixed"] = True
        lost = os.path.join(mount["path"], "lost+found")
        if os.path.isdir(lost) and not os.listdir(lost):
            shutil.rmtree(lost)
            done["owner_fixed"] = True
    return done


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "mounts": {"type": "list", "elements": "dict", "required": True},
            "unit_dir": {"type": "path", "default": "/etc/systemd/system"},
        },
        supports_check_mode=True,
    )
    results = [_apply(module, mount, module.params["unit_dir"])
               for mount in module.params["mounts"]]
    changed = any(r["created_image"] or r["wrote_unit"] or r["started"] or r.get("owner_fixed")
                  for r in results)
    if any(r["wrote_unit"] for r in results) and not module.check_mode:
        _run(module, ["systemctl", "daemon-reload"])
    diff = [r.pop("diff") for r in results if "diff" in r]
    module.exit_json(changed=changed, mounts=results, diff=diff if module._diff else [])


if __name__ == "__main__":
    main()
