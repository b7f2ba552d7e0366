"""The harness itself: the image's cache key, the install command, and a hung VM killed in time."""

import time
from pathlib import Path

import psutil
import pytest

import vm

CHECKOUT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("script, packages, same_as_base", [
    (b"mmdebstrap ...", ("python3", "systemd"), True),
    (b"mmdebstrap ...", ("systemd", "python3"), True),     # order does not matter
    (b"mmdebstrap ... # changed", ("python3", "systemd"), False),
    (b"mmdebstrap ...", ("python3", "systemd", "git"), False),
    (b"mmdebstrap ...", ("python3",), False),
])
def test_image_key_follows_what_the_image_is_made_from(script, packages, same_as_base):
    base = vm.image_key(b"mmdebstrap ...", ("python3", "systemd"))
    assert (vm.image_key(script, packages) == base) == same_as_base


def test_install_command_is_the_readmes(tmp_path):
    assert vm.readme_install_command(CHECKOUT / "README.md") == "python3 -m holdingpen.install"
    readme = tmp_path / "README.md"
    readme.write_text("sudo python3 -m holdingpen.install\n")     # not in a code block
    with pytest.raises(LookupError, match="install exactly the way the README says"):
        vm.readme_install_command(readme)


def test_job_dir_holds_the_tracked_files_only():
    with vm.JobDir(CHECKOUT, "true", ["idle"]) as job:
        copied = {str(path.relative_to(job.path / "src"))
                  for path in (job.path / "src").rglob("*") if path.is_file()}
        assert copied == set(vm.tracked_files(CHECKOUT))
        assert "README.md" in copied and not any(name.startswith(".git/") for name in copied)
        assert (job.path / "job.env").read_text() == "INSTALL='true'\nSCENARIOS='idle'\n"
        path = job.path
    assert not path.exists()


def test_a_hung_vm_is_killed_by_its_deadline(tmp_path):
    """A guest that does not power off in time: VMError, and no qemu or overlay left."""
    problem = vm.platform_problem()
    if problem:
        pytest.skip(problem)
    image = vm.build_image()
    job_dir = tmp_path / "job"      # empty: the guest would boot for far longer than 8 s anyway
    job_dir.mkdir()
    scratch_dir = tmp_path / "scratch"
    scratch_dir.mkdir()
    started = time.monotonic()
    with pytest.raises(vm.VMError, match="did not finish within 8 s"):
        vm.run_vm(image, job_dir, timeout_s=8, accels=("tcg",), scratch_dir=scratch_dir)
    assert time.monotonic() - started < 30
    assert [child.name() for child in psutil.Process().children(recursive=True)] == []
    assert list(scratch_dir.iterdir()) == []
