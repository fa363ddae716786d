"""The pinned cosign 3 is built beside cosign 2 and reachable as bin/cosign3 (not over it)."""

from tools.kflab import setup


def test_cosign3_is_built_into_its_own_directory_and_installed_as_cosign3(tmp_path, monkeypatch):
    monkeypatch.setattr(setup, "TOOLS", tmp_path)
    jobs = {label: (argv, env) for label, argv, env in setup.install_tools_commands()}
    module, version = setup.GO_TOOLS["cosign3"]
    assert module == "github.com/sigstore/cosign/v3/cmd/cosign" and version.startswith("v3.")
    argv, env = jobs[f"cosign3@{version}"]
    assert argv == ["go", "install", f"{module}@{version}"]
    # `go install` names the binary cosign: its own GOBIN keeps it off cosign 2's.
    assert env["GOBIN"] == str(tmp_path / "staging" / "cosign3")
    assert jobs[f"cosign@{setup.GO_TOOLS['cosign'][1]}"][1]["GOBIN"] == \
        str(tmp_path / "staging" / "cosign")
    for name, text in (("cosign3", "#!/bin/sh\necho 3\n"), ("cosign", "#!/bin/sh\necho 2\n")):
        built = tmp_path / "staging" / name / "cosign"
        built.parent.mkdir(parents=True)
        built.write_text(text)
        setup._install_staged(name)
    assert (tmp_path / "bin" / "cosign3").read_text().endswith("echo 3\n")
    assert (tmp_path / "bin" / "cosign").read_text().endswith("echo 2\n")
