"""The VM harness decisions that keep CI safe: accelerator choice, NIC restriction, cache keys."""

from pathlib import Path

from tools.kflab import image, vm

FIXTURES = Path(__file__).parent / "fixtures"
# Recorded on the CI machine: nested paravirtualised KVM, /dev/kvm present, no vmx/svm flag.
NESTED = (FIXTURES / "cpuinfo-nested-kvm-no-vmx.txt").read_text()


def test_tcg_when_cpu_lacks_vmx_even_if_dev_kvm_opens():
    assert vm.accelerator(NESTED, kvm_opens=lambda: True) == "tcg,thread=multi"


def test_kvm_only_when_flag_present_and_device_opens():
    with_vmx = NESTED.replace("flags\t\t: ", "flags\t\t: vmx ", 1)
    assert "vmx" in with_vmx
    assert vm.accelerator(with_vmx, kvm_opens=lambda: True) == "kvm"
    assert vm.accelerator(with_vmx, kvm_opens=lambda: False) == "tcg,thread=multi"


def test_vmx_must_be_a_whole_flag():
    fake = NESTED.replace("flags\t\t: ", "flags\t\t: vmxnot ", 1)
    assert vm.accelerator(fake, kvm_opens=lambda: True) == "tcg,thread=multi"


def test_debian13_image_boots_the_debian12_kernel(monkeypatch, tmp_path):
    monkeypatch.setattr(image, "CACHE", tmp_path)
    assert image.DISTROS["debian13"].kernel_from == "debian12"
    before = image.content_key(image.DISTROS["debian13"])
    # The donor's recipe is part of the Debian 13 key: a new kernel image rebuilds it.
    monkeypatch.setattr(image, "GUEST_PACKAGES", [*image.GUEST_PACKAGES, "jq"])
    assert image.content_key(image.DISTROS["debian13"]) != before


def test_qemu_nic_is_restricted_and_forward_is_loopback_only(tmp_path):
    img = image.Image(image.DISTROS["debian12"], tmp_path / "img")
    argv = vm.qemu_argv("t", tmp_path / "inst", img, "tcg,thread=multi", 40022, 1024, 1)
    nic = argv[argv.index("-nic") + 1]
    assert "restrict=on" in nic.split(",")
    assert "hostfwd=tcp:127.0.0.1:40022-:22" in nic.split(",")
    # Only one NIC, and the overlay (not the cached image) is the writable disk.
    assert argv.count("-nic") == 1 and "-netdev" not in argv
    drive = argv[argv.index("-drive") + 1]
    assert drive.startswith(f"file={tmp_path / 'inst' / 'overlay.qcow2'},")


def test_image_key_changes_with_recipe(monkeypatch, tmp_path):
    monkeypatch.setattr(image, "CACHE", tmp_path)
    before = image.content_key(image.DISTROS["debian12"])
    assert before == image.content_key(image.DISTROS["debian12"])
    assert before != image.content_key(image.DISTROS["debian13"])
    monkeypatch.setattr(image, "GUEST_PACKAGES", [*image.GUEST_PACKAGES, "jq"])
    assert image.content_key(image.DISTROS["debian12"]) != before


def test_instance_names_cannot_escape_the_instance_root():
    for bad in ("", "../x", "a/b", ".hidden"):
        try:
            vm.instance_dir(bad)
        except vm.HarnessError:
            continue
        raise AssertionError(f"{bad!r} accepted")
