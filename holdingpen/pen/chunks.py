"""Reservations made real: memory in a memfd, disk space in an unnamed file.

Both are plain descriptors, so they can travel to a client (SCM_RIGHTS) and
wait in systemd's descriptor store across a restart; and both vanish with the
last descriptor, leaving nothing behind.

* Memory: memfd_create + fallocate allocates every page (shmem) at once,
  about 3x faster than faulting them in through a mapping. The pages are not
  counted as MemAvailable and are charged to the daemon's cgroup. Only where
  the machine has swap is the memfd also mapped and locked (MAP_LOCKED), as
  that is what keeps it from being swapped out; without swap there is
  nowhere to push it.
* Disk: open(dir, O_TMPFILE) + fallocate allocates real blocks (not a sparse
  file) in a file no one can see or reach by name.
"""

import errno
import mmap
import os
import stat

from holdingpen.pen import config

MEMORY = "memory"
DISK = "disk"
_MAP_LOCKED = 0x2000   # <sys/mman.h> on Linux; the mmap module passes flags through


class ReserveError(Exception):
    """A reservation could not be made; the message says why (a shortfall)."""


class Chunk:
    """One reservation: a descriptor of size_bytes, its mapping if locked, and
    the name the daemon stored it under in systemd's store (None if not stored)."""

    __slots__ = ("fd", "size_bytes", "kind", "mapping", "store_name")

    def __init__(self, fd, size_bytes, kind, mapping=None):
        self.fd, self.size_bytes, self.kind, self.mapping = fd, size_bytes, kind, mapping
        self.store_name = None

    def keep_mapping_only(self):
        """Lent as a descriptor and handed over: close ours, but keep the pages locked
        for the borrower (a mapping holds them without the descriptor) until close()."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def close(self):
        """Give the memory or space back (unless a client holds the descriptor too)."""
        if self.mapping is not None:
            self.mapping.close()
            self.mapping = None
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def __repr__(self):
        return f"Chunk({self.kind}, fd={self.fd}, {self.size_bytes})"


def reserve_memory(size_bytes, lock):
    """A memfd with size_bytes allocated; mapped and locked if lock.

    Raises:
        ReserveError: the kernel refused (no memory, a memlock limit).
    """
    try:
        fd = os.memfd_create("holdingpen-memory", os.MFD_CLOEXEC)
    except OSError as e:        # EMFILE: a flood of clients holds every descriptor
        raise ReserveError(f"cannot reserve memory: {e.strerror}") from None
    try:
        os.posix_fallocate(fd, 0, size_bytes)
        return Chunk(fd, size_bytes, MEMORY, _lock(fd, size_bytes) if lock else None)
    except OSError as e:
        os.close(fd)
        raise ReserveError(f"cannot reserve memory: {e.strerror}") from None


def _lock(fd, size_bytes):
    try:
        return mmap.mmap(fd, size_bytes, flags=mmap.MAP_SHARED | mmap.MAP_POPULATE | _MAP_LOCKED,
                         prot=mmap.PROT_READ)
    except OSError as e:
        if e.errno in (errno.EAGAIN, errno.EPERM, errno.ENOMEM):
            raise OSError(e.errno, f"cannot lock it in memory ({e.strerror}); "
                                   "raise LimitMEMLOCK= or grant CAP_IPC_LOCK") from None
        raise


def reserve_disk(directory, size_bytes):
    """An unnamed file in directory's filesystem with size_bytes of blocks allocated.

    Raises:
        ReserveError: no space, or the directory is unusable.
    """
    try:
        fd = os.open(directory, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600)
    except OSError as e:
        if e.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
            raise ReserveError(config.cannot_reserve_in(directory, e)) from None
        fd = _unlinked_file(directory)    # a filesystem without O_TMPFILE
    try:
        os.posix_fallocate(fd, 0, size_bytes)
    except OSError as e:
        os.close(fd)
        raise ReserveError(f"cannot reserve {size_bytes} bytes in {directory}: {e.strerror}") from None
    return Chunk(fd, size_bytes, DISK)


def _unlinked_file(directory):
    import tempfile
    try:
        fd, path = tempfile.mkstemp(prefix=".holdingpen-", dir=directory)
    except OSError as e:
        raise ReserveError(f"cannot reserve space in {directory}: {e.strerror}") from None
    os.unlink(path)
    os.set_inheritable(fd, False)
    return fd


def adopt(fd, lock):
    """A Chunk around a descriptor kept across a restart (no page is faulted again).

    Raises:
        ReserveError: not a reservation of ours.
    """
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_nlink != 0 or st.st_size == 0:
        raise ReserveError("not an unnamed, allocated file")
    kind = MEMORY if os.readlink(f"/proc/self/fd/{fd}").startswith("/memfd:") else DISK
    chunk = Chunk(fd, st.st_size, kind)
    if kind == MEMORY and lock:
        try:
            chunk.mapping = _lock(fd, st.st_size)
        except OSError as e:
            raise ReserveError(str(e)) from None
    return chunk


def same_filesystem(chunk, directory):
    """Whether an adopted disk chunk lies on directory's filesystem.

    Compared by statvfs's f_fsid, not st_dev: on overlayfs a directory and an
    unnamed file in it report different st_dev.
    """
    try:
        return os.fstatvfs(chunk.fd).f_fsid == os.statvfs(directory).f_fsid
    except OSError:
        return False
