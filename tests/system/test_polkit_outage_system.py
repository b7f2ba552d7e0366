"""A polkitd that stops answering: borrows are refused in time, and the daemon keeps serving."""

import json
import time


def systemd_value(ct, unit, prop):
    return ct.run(["systemctl", "show", "-p", prop, "--value", unit]).stdout.strip()


def borrow(ct, user):
    return ct.run(["gatekeeper", "--strict", "true"], user=user, check=False)


def test_a_stopped_polkitd_neither_stalls_nor_kills_the_daemon(ct):
    assert borrow(ct, "alice").returncode == 0          # polkit up, and its connection open
    polkitd = systemd_value(ct, "polkit.service", "MainPID")
    restarts = systemd_value(ct, "holdingpen.service", "NRestarts")
    ct.run(["kill", "-STOP", polkitd])
    try:
        slow = ct.popen(["gatekeeper", "--strict", "true"], user="alice")
        time.sleep(0.3)                                # its check is now waiting on polkitd
        start = time.monotonic()
        status = json.loads(ct.run(["holdingpen", "status", "--json"]).stdout)
        assert time.monotonic() - start < 1.5          # the loop still answers at once
        assert status["pools"][0]["count"] >= 1
        code, out, err = slow.finish(timeout_s=15)
        assert code == 77
        assert "polkit did not answer within 2 s; try again (not-authorized)" in err
        assert borrow(ct, "root").returncode == 0      # root needs no polkit
    finally:
        ct.run(["kill", "-CONT", polkitd])
    refilled = time.monotonic() + 20                   # root's borrow took the only chunk
    while json.loads(ct.run(["holdingpen", "status", "--json"]).stdout)["pools"][0]["held"] < 1:
        assert time.monotonic() < refilled, "the pool did not refill"
        time.sleep(0.05)
    time.sleep(5)                                      # refusals pause 5 s after polkit's silence
    assert borrow(ct, "alice").returncode == 0          # and all is well again
    assert systemd_value(ct, "holdingpen.service", "NRestarts") == restarts
    assert systemd_value(ct, "holdingpen.service", "ActiveState") == "active"
