"""Who may borrow and how much, with the daemon run by hand and clients run as nobody.

No system bus is reachable here (DBUS_SYSTEM_BUS_ADDRESS points nowhere), so
the daemon falls back to the allow-list of its configuration: the case of a
server without polkit. polkit itself is asked in the system tier.
"""

import json
import os
import subprocess

import pytest

from lockjobs import needs_root, nobody, wait_until
from pen import Pen, connect, read_line, write_config

NO_BUS = {"DBUS_SYSTEM_BUS_ADDRESS": "unix:path=/nonexistent/system_bus_socket"}


def start(bindir, shared_tmp, extra):
    env = dict(os.environ, **NO_BUS)
    p = Pen(bindir, shared_tmp, write_config(shared_tmp / "pool.toml", memory_count=4, size="1M",
                                             extra=extra), env=env)
    p.wait_full()
    return p


def as_nobody(pen, argv, **kw):
    return pen.run([*nobody(), *argv], **kw)


@needs_root
@pytest.mark.parametrize("allow, status", [('users = ["nobody"]', 0), ('groups = ["nogroup"]', 0),
                                           ("", 77), ('users = ["root"]', 77)])
def test_without_polkit_the_allow_list_decides(bindir, shared_tmp, allow, status):
    p = start(bindir, shared_tmp, f"[authorize]\n{allow}\n")
    try:
        done = as_nobody(p, ["gatekeeper", "--strict", "true"])
        assert done.returncode == status
        if status:
            assert done.stderr == ("gatekeeper: polkit is not running here, and only the users and "
                                   f"groups in [authorize] of {shared_tmp}/pool.toml may borrow "
                                   "(not-authorized)\n")
        assert p.run(["gatekeeper", "--strict", "true"]).returncode == 0    # root, always
        as_nobody(p, ["gatekeeper", "true"])
        assert p.logged().count("no-polkit:") == 1                         # said once
    finally:
        assert p.stop() == 0


@needs_root
def test_connections_per_user(bindir, shared_tmp):
    p = start(bindir, shared_tmp, "[limits]\nconnections_per_user = 3\n")
    # nobody's connections are made by a helper that holds them open.
    hold = ("import socket, sys, json\n"
            f"socks = [socket.socket(socket.AF_UNIX) for _ in range(4)]\n"
            f"[s.connect({p.socket!r}) for s in socks]\n"
            "socks[3].settimeout(10)\n"
            "print(json.loads(socks[3].recv(4096))['error'], flush=True)\n"
            "sys.stdin.readline()\n")
    holder = subprocess.Popen([*nobody(), "/usr/bin/python3", "-c", hold], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "limited\n"      # the fourth is refused at once
        assert p.run(["gatekeeper", "--strict", "true"]).returncode == 0   # others are served
        assert p.pool()["count"] == 4
    finally:
        holder.stdin.close()
        holder.wait(30)
        holder.stdout.close()
    wait_until(lambda: as_nobody(p, ["holdingpen", "status"]).returncode == 0,
               "nobody to be let in again once its connections closed")
    assert p.stop() == 0


@needs_root
def test_borrows_per_second(bindir, shared_tmp):
    p = start(bindir, shared_tmp, '[limits]\nborrows_per_second = 0.01\nborrow_burst = 2\n'
                                  '[authorize]\nusers = ["nobody"]\n')
    try:
        codes = [as_nobody(p, ["gatekeeper", "--strict", "true"]).returncode for _ in range(3)]
        assert codes == [0, 0, 69]
        third = as_nobody(p, ["gatekeeper", "--strict", "true"])
        assert third.stderr == "gatekeeper: more than 0.01 borrows a second; slow down (limited)\n"
        assert p.run(["gatekeeper", "--strict", "true"]).returncode == 0   # root is not limited
    finally:
        assert p.stop() == 0


@needs_root
def test_status_hides_other_users_commands(bindir, shared_tmp):
    p = start(bindir, shared_tmp, "")
    with connect(p.socket) as s:          # root borrows
        s.sendall(b'{"action": "borrow"}\n')
        assert json.loads(read_line(s))["ok"]
        theirs = json.loads(as_nobody(p, ["holdingpen", "status", "--json"]).stdout)["loans"]
        mine = p.status()["loans"]
        with open(f"/proc/{os.getpid()}/comm") as f:
            my_command = f.read().strip()
        assert [loan["command"] for loan in theirs] == [None]
        assert [loan["command"] for loan in mine] == [my_command]
        assert mine[0]["user"] == theirs[0]["user"] == "root"
        text = as_nobody(p, ["holdingpen", "status"]).stdout.splitlines()
        assert text[-1].split()[3] == "-"
    assert p.stop() == 0
