"""perflock: a fair readers/writer lock over flock(2) on /run/perflock.

perflock (the lock and its Python API), lockqueue (the pure queue rules),
proclocks (the kernel's /proc/locks), who (holders and waiters, for wholock).
No daemon: every "I am here" is a lock the kernel drops when its holder dies.
"""
