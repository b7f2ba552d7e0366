"""Exit statuses of every command, defined once (sysexits.h and the shell's)."""

USAGE = 64          # EX_USAGE: bad command line
NOINPUT = 66        # EX_NOINPUT, as flock(1): the lock file is missing or unusable
UNAVAILABLE = 69    # EX_UNAVAILABLE: no reservation (--strict), or the daemon cannot be asked
OSERR = 71          # EX_OSERR: could not fork
CANTCREAT = 73      # EX_CANTCREAT: the socket cannot be bound
NOPERM = 77         # EX_NOPERM: not authorized (--strict)
CONFIG = 78         # EX_CONFIG: a bad configuration
CANNOT_RUN = 126    # CMD found but not executable, as the shell says it
NOT_FOUND = 127     # CMD not found, as the shell
SIGNAL_BASE = 128   # 128+N: died of signal N, as the shell
