"""The journal names the command that actually ran, not gatekeeper (issue 9), under
real systemd and journald: what an administrator auditing borrows looks up with
journalctl fields."""

from conftest import USERS
from daemonctl import borrowing, journal, journal_mark, wait_for

MESSAGE_ID_RUNNING = "e51475524a414353bd3ced90108eed58"   # fixed forever (events.py)


def test_running_and_returned_entries_carry_the_command_that_held_the_loan(ct):
    mark = journal_mark(ct)
    with borrowing(ct, "alice") as job:      # gatekeeper ... sh -c '...'
        running = wait_for("a running entry", lambda: journal(
            ct, "HOLDINGPEN_EVENT=running", after=mark))
        assert job.finish()[0] == 3
    [returned] = wait_for("a returned entry", lambda: journal(
        ct, "HOLDINGPEN_EVENT=returned", "HOLDINGPEN_COMMAND=sh", after=mark))
    [lent] = journal(ct, "HOLDINGPEN_EVENT=lent", after=mark)
    [entry] = running
    pid = lent["HOLDINGPEN_CLIENT_PID"]
    assert entry["MESSAGE_ID"] == MESSAGE_ID_RUNNING
    assert entry["MESSAGE"] == (f"alice's loan of 256 MiB of memory (pid {pid}) now runs sh, "
                                "was gatekeeper")
    assert (entry["HOLDINGPEN_COMMAND"], entry["HOLDINGPEN_CLIENT_PID"]) == ("sh", pid)
    # CLIENT_COMM is what connected; COMMAND is what held the loan.
    assert lent["HOLDINGPEN_CLIENT_COMM"] == returned["HOLDINGPEN_CLIENT_COMM"] == "gatekeeper"
    assert returned["HOLDINGPEN_CLIENT_UID"] == str(USERS["alice"])
    assert returned["MESSAGE"] == "alice (sh) returned 256 MiB of memory"
