"""holdingpen: share one Linux machine fairly.

Two products, independent of each other, and the shells around them:

    pen/      Holding Pen: the reservation daemon, its pure cores (pool,
              policy, protocol, config) and the client side of its protocol
    lock/     perflock: the fair readers/writer lock on /run/perflock, and
              who holds it (no daemon)
    cli/      the commands: holdingpen, gatekeeper, perflock and pls, wholock
    common/   what both products' commands use: command lines, wording,
              exit codes, running CMD
    perflock  the documented Python API of the lock (a re-export of lock/)
    install   builds the Debian package from a checkout and installs it with apt

pen/ and lock/ import only themselves and common/; cli/ imports any of them.
Modules are imported on demand, so that a command pays only for what it uses.
"""
