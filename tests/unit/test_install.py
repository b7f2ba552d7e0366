"""holdingpen.install's pure parts: the build dependencies it asks apt for, the launchers."""

from pathlib import Path

import pytest

from holdingpen import install

REPO = Path(__file__).resolve().parents[2]

CONTROL = """\
Source: holdingpen
Build-Depends: debhelper-compat (= 13),
               dh-sequence-python3,
               python3-all,
Standards-Version: 4.6.2
"""


@pytest.mark.parametrize("control, expected", [
    (CONTROL, "debhelper-compat (= 13), dh-sequence-python3, python3-all"),
    ("Source: x\nBuild-Depends: debhelper-compat (= 13)\n", "debhelper-compat (= 13)"),
    # The field ends where the next one starts, a continuation line included.
    ("Build-Depends: a,\n b\nBuild-Depends-Indep: c,\n d\n", "a, b"),
    ("Source: x\nBuild-Depends-Indep: c\n", ""),
], ids=["multi-line", "one-line", "next-field", "none"])
def test_build_depends(control, expected):
    assert install.build_depends(control) == expected


def test_the_checkouts_build_depends_name_the_python_build():
    needs = install.build_depends((REPO / "debian" / "control").read_text())
    assert "debhelper-compat (= 13)" in needs and "pybuild-plugin-pyproject" in needs


@pytest.mark.parametrize("libdir, path_line", [
    (None, []),                                     # the package: Python finds it
    ("/src", ["sys.path.insert(0, '/src')"]),       # tests: the checkout first
])
def test_launchers_import_only_the_commands_module(tmp_path, libdir, path_line):
    paths = install.write_launchers(tmp_path, libdir, "/usr/bin/python3",
                                    {"pls": "holdingpen.cli.perflock:main_pls"})
    assert paths == [tmp_path / "pls"]
    lines = [line for line in paths[0].read_text().splitlines() if not line.startswith("#")]
    assert paths[0].read_text().startswith("#!/usr/bin/python3 -I\n")
    assert lines == ["import sys", *path_line, "from holdingpen.cli.perflock import main_pls",
                     "sys.exit(main_pls())"]
    assert paths[0].stat().st_mode & 0o777 == 0o755


# ---- the package's /etc/holdingpen/holdingpen.toml ----

def _settings(config):
    return config.pools, config.limits, {k: tuple(v) for k, v in config.authorize.items()}


def _uncommented(text, skip_table):
    """text with "# key = value" and "# [table]" lines made live, except in skip_table."""
    lines, skipping = [], False
    for line in text.splitlines():
        body = line.removeprefix("# ")
        if body.startswith("["):
            skipping = body.startswith(skip_table)
        looks_live = body.startswith("[") or " = " in body.split("#")[0]
        lines.append(body if looks_live and not skipping and line.startswith("# ") else line)
    return "\n".join(lines) + "\n"


def test_shipped_configuration_is_the_defaults_commented():
    from holdingpen.pen import config
    shipped = (REPO / "debian" / "holdingpen.toml").read_text()
    defaults = _settings(config.parse(b"", "(defaults)"))
    assert _settings(config.parse(shipped.encode(), "shipped")) == defaults
    # Its commented values are the defaults themselves (the [[disk]] table is
    # an example: there is no disk reservation by default).
    live = _uncommented(shipped, skip_table="[[disk]]")
    assert "\n[memory]\n" in live and "\n[limits]\n" in live and "\n[authorize]" in live
    assert _settings(config.parse(live.encode(), "uncommented")) == defaults
