"""Finding the file a command name runs, as execvp(3) would, before anything else is done.

Apart from job.py so that gatekeeper, which execs CMD itself, does not load
job's death-signal machinery (ctypes' C core) it never uses.
"""

import os


def find_program(name, search_path):
    """The file execvp(3) would run for name, or None.

    Looked up in the parent: os.execvp imports the warnings module in the
    child, and a command that does not exist should not wait for its turn.
    """
    if "/" in name:
        return name
    for directory in search_path.split(":"):
        candidate = os.path.join(directory or ".", name)
        if os.access(candidate, os.X_OK) and not os.path.isdir(candidate):
            return candidate
    return None
