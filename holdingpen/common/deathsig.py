"""Die with the parent: prctl(PR_SET_PDEATHSIG), called in a forked child before exec.

Through the C core of ctypes rather than the ctypes package: importing the
package costs about 5 ms, paid by every job perflock starts; this costs 0.5.
"""

import _ctypes

PR_SET_PDEATHSIG = 1
_RTLD_NOW = 2


class _CInt(_ctypes._SimpleCData):
    _type_ = "i"


class _CFunction(_ctypes.CFuncPtr):
    _flags_ = _ctypes.FUNCFLAG_CDECL | _ctypes.FUNCFLAG_USE_ERRNO
    _restype_ = _CInt


class _Libc:
    _handle = _ctypes.dlopen(None, _RTLD_NOW)   # this process's own libc


_prctl = _CFunction(("prctl", _Libc()))


def set_parent_death_signal(signum):
    """Have the kernel send us signum when our parent (thread) exits.

    Raises:
        OSError: prctl(2) refused.
    """
    if _prctl(PR_SET_PDEATHSIG, signum, 0, 0, 0) != 0:
        import ctypes
        error = ctypes.get_errno()
        raise OSError(error, f"prctl(PR_SET_PDEATHSIG): error {error}")
