"""The one-line errors for lock files, each naming its fix."""

import errno

import pytest

from holdingpen.lock.perflock import _flock_problem, lock_path, missing_lock_file


@pytest.mark.parametrize("path, environ, expected", [
    (None, {}, "/run/perflock"),
    (None, {"PERFLOCK_LOCK": "/tmp/mine"}, "/tmp/mine"),
    ("/srv/lock", {"PERFLOCK_LOCK": "/tmp/mine"}, "/srv/lock"),
    (None, {"PERFLOCK_LOCK": ""}, "/run/perflock"),
])
def test_lock_path(path, environ, expected):
    assert lock_path(path, environ) == expected


@pytest.mark.parametrize("path, fix", [
    ("/run/perflock", "create it as root with: systemd-tmpfiles --create perflock.conf"),
    ("/tmp/mine", "create it (touch /tmp/mine), or use the default /run/perflock "
                  "(unset PERFLOCK_LOCK, no --lock)"),
])
def test_missing_lock_file_names_the_fix(path, fix):
    assert missing_lock_file(path) == f"the lock file {path} does not exist; {fix}"


@pytest.mark.parametrize("code, text", [
    (errno.ENOLCK, "flock(2) does not work on the filesystem holding /mnt/lock (No locks available); "
                   "put the lock on a local filesystem such as /run"),
    (errno.EOPNOTSUPP, "flock(2) does not work on the filesystem holding /mnt/lock (Operation not "
                       "supported); put the lock on a local filesystem such as /run"),
    (errno.EIO, "cannot lock /mnt/lock: Input/output error"),
])
def test_flock_problems(code, text):
    import os
    assert _flock_problem("/mnt/lock", OSError(code, os.strerror(code))) == text
