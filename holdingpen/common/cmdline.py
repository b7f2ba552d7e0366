"""Command lines of the shape ``prog [OPTION...] [--] [CMD [ARG...]]``.

Options stop at the first word that is not one, so ``perflock ls -l`` runs
``ls -l``. Short options cluster (``-qn``) and take a value attached or next
(``-w5``, ``-w 5``); long ones take it as ``--timeout=5`` or ``--timeout 5``.
Hand-written rather than argparse, which alone costs more start-up time than
perflock's whole budget. find_program() finds CMD's file, here rather than
in job.py so that gatekeeper, which execs CMD itself, loads no more.
"""

import os


class UsageError(Exception):
    """The command line is wrong; the message says how."""


class Option:
    """One option: its spellings, where its value goes, how to read the value.

    Args:
        short: e.g. "-w", or None.
        long: e.g. "--timeout", or None.
        dest: the key in the parsed values.
        value: how the value is named in messages (e.g. "SECONDS"), or None
            for a flag, which is stored as True.
        convert: turns the value's text into its value; raises ValueError
            with a message for a bad one.
    """

    def __init__(self, short, long, dest, value=None, convert=str):
        self.short, self.long, self.dest = short, long, dest
        self.value, self.convert = value, convert


def parse(options, argv, takes_command=True):
    """(values, command): values has every dest (None or False when absent).

    Raises:
        UsageError: an unknown option, a missing or bad value, or a word
            where no command is taken.
    """
    by_name = {}
    for option in options:
        for name in (option.short, option.long):
            if name:
                by_name[name] = option
    values = {o.dest: (None if o.value else False) for o in options}
    i = 0
    while i < len(argv):
        word = argv[i]
        i += 1
        if word == "--":
            break
        if not word.startswith("-") or word == "-":
            i -= 1
            break
        if word.startswith("--"):
            name, eq, attached = word.partition("=")
            option = _known(by_name, name)
            if not option.value:
                if eq:
                    raise UsageError(f"option {name} takes no value")
                values[option.dest] = True
                continue
            if not eq:
                if i == len(argv):
                    raise UsageError(f"option {name} needs a value ({option.value})")
                attached, i = argv[i], i + 1
            values[option.dest] = _convert(option, name, attached)
            continue
        for j in range(1, len(word)):   # a cluster of short options
            name = "-" + word[j]
            option = _known(by_name, name)
            if not option.value:
                values[option.dest] = True
                continue
            attached = word[j + 1:]
            if not attached:
                if i == len(argv):
                    raise UsageError(f"option {name} needs a value ({option.value})")
                attached, i = argv[i], i + 1
            values[option.dest] = _convert(option, name, attached)
            break
    command = argv[i:]
    if command and not takes_command:
        raise UsageError(f"unexpected argument {command[0]!r}")
    return values, command


def _known(by_name, name):
    try:
        return by_name[name]
    except KeyError:
        raise UsageError(f"unknown option {name}") from None


def _convert(option, name, text):
    try:
        return option.convert(text)
    except ValueError as e:
        raise UsageError(f"option {name}: {e}") from None


def seconds(text):
    """A non-negative number of seconds, e.g. "5" or "0.5"."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0 or value == float("inf"):
        raise ValueError(f"expected a number of seconds, not {text!r}")
    return value


def exit_code(text):
    """An exit status, 0 to 255."""
    if not (text.isascii() and text.isdigit()) or int(text) > 255:
        raise ValueError(f"expected an exit code from 0 to 255, not {text!r}")
    return int(text)


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

