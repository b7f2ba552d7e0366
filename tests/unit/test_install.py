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
