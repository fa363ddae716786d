"""Offline Debian guest images built from Debian packages, cached under a content key.

An image is a raw ext4 root filesystem plus the distribution kernel and initramfs taken
out of it, so qemu boots it with -kernel/-initrd and no bootloader. The cache key covers
everything that decides the image's content (suite, mirror, package list, this file, the
harness SSH public key), so a change to any of them builds a new image and nothing else does.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .common import CACHE, HarnessError, StateError, log, rerun_as_root, run, sha256_of

MIRROR = os.environ.get("KF_DEBIAN_MIRROR", "http://deb.debian.org/debian")

# Everything the roles need is preinstalled: guests have no route to any mirror, and a
# package task then only has to confirm what is already there.
GUEST_PACKAGES = [
    "systemd", "systemd-sysv", "dbus", "udev", "kmod", "procps", "iproute2",
    "openssh-server", "python3", "python3-apt", "sudo", "ca-certificates",
    "initramfs-tools", "linux-image-cloud-amd64", "e2fsprogs",
    "nftables", "bubblewrap", "libcap-ng-utils", "libcap2-bin", "libseccomp2",
    "acl", "attr", "util-linux", "iputils-ping", "strace",
]
# Installed with apt inside the chroot after debootstrap: their dependencies go through
# virtual packages (e.g. python3-cffi-backend-api-min), which debootstrap cannot resolve.
GUEST_EXTRA_PACKAGES = ["python3-cryptography", "python3-seccomp"]


@dataclass(frozen=True)
class Distro:
    name: str
    suite: str
    systemd: int
    # Where the guest kernel comes from: its own suite, or another distro's image. Debian 13's
    # 6.12 kernel crashes under TCG on qemu 7.2 (double faults and NULL dereferences in
    # kmalloc, virtio-blk and the scheduler, with 1 or 2 vCPUs, any -cpu model tried), so the
    # Debian 13 guest boots Debian 12's 6.1 kernel; its userspace (systemd 257) is Debian 13's.
    kernel_from: str | None = None


KERNEL_PACKAGES = {"linux-image-cloud-amd64", "initramfs-tools"}
DISTROS = {
    "debian12": Distro("debian12", "bookworm", 252),
    "debian13": Distro("debian13", "trixie", 257, kernel_from="debian12"),
}

BUILD_TIMEOUT = 1800


@dataclass(frozen=True)
class Image:
    distro: Distro
    path: Path

    @property
    def disk(self) -> Path:
        return self.path / "rootfs.img"

    @property
    def kernel(self) -> Path:
        return self.path / "vmlinuz"

    @property
    def initrd(self) -> Path:
        return self.path / "initrd.img"


def ssh_keypair() -> Path:
    """The harness key that logs in as root to lab and test guests (never to anything else)."""
    key = CACHE / "ssh" / "id_ed25519"
    if not key.exists():
        key.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "kernelfence-lab",
             "-f", str(key)])
    return key


def content_key(distro: Distro) -> str:
    pubkey = ssh_keypair().with_suffix(".pub").read_bytes()
    kernel = content_key(DISTROS[distro.kernel_from]) if distro.kernel_from else "own"
    recipe = json.dumps({"suite": distro.suite, "mirror": MIRROR, "packages": GUEST_PACKAGES,
                         "extra": GUEST_EXTRA_PACKAGES, "kernel": kernel},
                        sort_keys=True).encode()
    return sha256_of(recipe, Path(__file__).read_bytes(), pubkey)[:16]


def image_for(distro_name: str) -> Image:
    if distro_name not in DISTROS:
        raise HarnessError(f"unknown distro {distro_name!r}; choose one of {', '.join(DISTROS)}")
    distro = DISTROS[distro_name]
    return Image(distro, CACHE / "images" / f"{distro.name}-{content_key(distro)}")


def image_ready(image: Image) -> bool:
    return image.disk.exists() and image.kernel.exists() and image.initrd.exists()


def check_can_build(distro_name: str) -> None:
    """Before any long step: a missing image needs root to build (debootstrap, chroot)."""
    image = image_for(distro_name)
    if not image_ready(image) and os.geteuid() != 0:
        raise StateError(f"the {distro_name} guest image is not built yet ({image.path}) and "
                         "building it needs root (debootstrap, chroot)", rerun_as_root())


def ensure_image(distro_name: str) -> Image:
    """Return the cached image for the distro, building it first when its recipe changed."""
    image = image_for(distro_name)
    if image_ready(image):
        return image
    check_can_build(distro_name)
    image.path.parent.mkdir(parents=True, exist_ok=True)
    # One build per distro at a time: a second ./kf (another terminal, a molecule run) waits
    # here instead of deleting the first one's work directory as a stale one.
    with open(image.path.parent / f".lock-{image.distro.name}", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"another ./kf is building the {image.distro.name} image; waiting for it")
            fcntl.flock(lock, fcntl.LOCK_EX)
        if image_ready(image):
            return image
        return _build_locked(image)


def _build_locked(image: Image) -> Image:
    for stale in image.path.parent.glob(f".build-{image.distro.name}-*"):
        shutil.rmtree(stale, ignore_errors=True)  # left by a killed build
    work = Path(tempfile.mkdtemp(prefix=f".build-{image.distro.name}-", dir=image.path.parent))
    try:
        _build(image.distro, work)
        if image.path.exists():
            shutil.rmtree(image.path)
        work.rename(image.path)
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)
    _prune_stale(image)
    return image


def _prune_stale(current: Image) -> None:
    for other in current.path.parent.glob(f"{current.distro.name}-*"):
        if other != current.path and other.is_dir():
            log(f"removing stale image {other.name}")
            shutil.rmtree(other, ignore_errors=True)


def _build(distro: Distro, work: Path) -> None:
    root = work / "rootfs"
    log(f"building {distro.name} ({distro.suite}) image in {work}; this takes a few minutes")
    packages = GUEST_PACKAGES
    donor = ensure_image(distro.kernel_from) if distro.kernel_from else None
    if donor:
        packages = [p for p in GUEST_PACKAGES if p not in KERNEL_PACKAGES]
    run(["debootstrap", "--variant=minbase", f"--include={','.join(packages)}",
         "--components=main", distro.suite, str(root), MIRROR], timeout=BUILD_TIMEOUT)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    run(["chroot", str(root), "apt-get", "install", "-y", "-q", "--no-install-recommends",
         *GUEST_EXTRA_PACKAGES], timeout=BUILD_TIMEOUT, env=env)
    run(["chroot", str(root), "apt-get", "clean"], timeout=120)
    _configure_rootfs(root, distro)
    if donor:
        shutil.copy2(donor.kernel, work / "vmlinuz")
        shutil.copy2(donor.initrd, work / "initrd.img")
        # The donor's modules, read out of its filesystem image without mounting it. rdump
        # recreates the directory it dumps inside the target: dump to a scratch directory and
        # move each kernel's tree to /usr/lib/modules/<version> (a nested modules/modules/
        # leaves the guest unable to load any module, e.g. nf_tables for nft).
        scratch = work / "donor-modules"
        scratch.mkdir()
        run(["debugfs", "-R", f"rdump /usr/lib/modules {scratch}", str(donor.disk)], timeout=600)
        modules = root / "usr/lib/modules"
        modules.mkdir(parents=True, exist_ok=True)
        for tree in (scratch / "modules").iterdir():
            shutil.move(str(tree), str(modules / tree.name))
        shutil.rmtree(scratch)
        if not list(modules.glob("*/modules.dep")):
            raise HarnessError(f"{distro.name}: no modules.dep under {modules} after copying "
                               f"the {distro.kernel_from} kernel's modules")
    else:
        kernels = sorted((root / "boot").glob("vmlinuz-*"))
        initrds = sorted((root / "boot").glob("initrd.img-*"))
        if not kernels or not initrds:
            raise HarnessError(f"{distro.name}: debootstrap produced no kernel/initramfs")
        shutil.copy2(kernels[-1], work / "vmlinuz")
        shutil.copy2(initrds[-1], work / "initrd.img")
    run(["mkfs.ext4", "-q", "-L", "kfroot", "-d", str(root), str(work / "rootfs.img"), "4G"],
        timeout=600)
    shutil.rmtree(root)
    (work / "recipe.json").write_text(json.dumps(
        {"distro": distro.name, "suite": distro.suite, "mirror": MIRROR,
         "packages": GUEST_PACKAGES, "extra": GUEST_EXTRA_PACKAGES}, indent=2))


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)


def _configure_rootfs(root: Path, distro: Distro) -> None:
    _write(root / "etc/hostname", f"kf-{distro.name}\n")
    _write(root / "etc/hosts", f"127.0.0.1 localhost\n127.0.1.1 kf-{distro.name}\n::1 localhost\n")
    _write(root / "etc/fstab", "/dev/vda / ext4 defaults,errors=remount-ro 0 1\n")
    _write(root / "etc/systemd/network/10-lab.network",
           "[Match]\nName=eth0 en*\n\n[Network]\nDHCP=ipv4\nLinkLocalAddressing=no\n")
    # The guest resolves nothing: its NIC is restricted and there is no resolver to reach.
    _write(root / "etc/resolv.conf", "# kernelfence lab guest: no resolver\n")
    ssh_dir = root / "root/.ssh"
    ssh_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    _write(ssh_dir / "authorized_keys", ssh_keypair().with_suffix(".pub").read_text(), 0o600)
    _write(root / "etc/ssh/sshd_config.d/kernelfence-lab.conf",
           "PermitRootLogin prohibit-password\nPasswordAuthentication no\nUseDNS no\n")
    # Unique host keys per image build; the harness pins nothing to them (loopback only).
    for unit in ("systemd-networkd.service", "ssh.service"):
        run(["chroot", str(root), "systemctl", "enable", unit], timeout=120)
    run(["chroot", str(root), "systemctl", "mask", "apt-daily.timer", "apt-daily-upgrade.timer",
         "e2scrub_all.timer", "fstrim.timer"], timeout=120, check=False)
    run(["chroot", str(root), "passwd", "-l", "root"], timeout=60)
    shutil.rmtree(root / "var/cache/apt/archives", ignore_errors=True)
    (root / "var/cache/apt/archives/partial").mkdir(parents=True, exist_ok=True)
