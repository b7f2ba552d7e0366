"""The Python API of the lock, where the README documents it:

    from holdingpen.perflock import PerfLock, LockBusy, LockError

It lives in holdingpen.lock.perflock.
"""

from holdingpen.lock.perflock import LockBusy, LockError, PerfLock

__all__ = ["LockBusy", "LockError", "PerfLock"]
