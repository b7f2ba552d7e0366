"""Wording shared by perflock, pls and wholock."""

# What needs no quoting in a shell word: shlex's own set ([\w@%+=:,./-], ASCII).
_SHELL_SAFE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_@%+=:,./-")


def shell_words(argv):
    """argv as one line a shell reads back as argv: shlex.join's text.

    Not shlex itself: it imports re (and enum), about 5 ms of wholock's start.
    """
    return " ".join(word if word and _SHELL_SAFE.issuperset(word)
                    else "'" + word.replace("'", "'\"'\"'") + "'" for word in argv)


def age(seconds):
    """A short, human duration: 0.4s, 42s, 3m12s, 2h05m, 3d04h."""
    if seconds < 10:
        return f"{max(seconds, 0):.1f}s"
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    if seconds < 86400:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d{seconds % 86400 // 3600:02d}h"


def holders(rows, now):
    """Who has the machine, in a phrase: 'alice holds it exclusively (pid 42, 3m12s: ./bench)'.

    rows: who.survey() rows; now: Unix time. Returns None when nobody holds it.
    """
    holding = [r for r in rows if r["state"] == "holding"]
    if not holding:
        return None
    first = holding[0]
    how = "exclusively" if first["mode"] == "exclusive" else "shared"
    others = len(holding) - 1
    who = first["user"] + (f" and {others} other job{'s' * (others > 1)}" if others else "")
    verb = "hold" if others else "holds"
    note = f" [{first['message']}]" if first["message"] else ""
    return (f"{who} {verb} it {how} (pid {first['pid']}, {age(now - first['since'])}: "
            f"{first['command']}{note})")
