"""A daemon on a machine without python3-jeepney: borrows are decided by the allow-list.

The daemon is started by a launcher like the installed one that, in
addition, makes every import of jeepney fail, as it does where the package is
not installed. Clients run as nobody (root is never asked about).
"""

import shutil
import sys
from pathlib import Path

from lockjobs import needs_root, nobody
from pen import Pen, write_config

LAUNCHER = """#!{python} -I
import sys
from pathlib import Path
sys.path.insert(0, {repo!r})


class NoJeepney:
    \"\"\"Python as it is without python3-jeepney installed.\"\"\"
    def find_spec(self, name, path=None, target=None):
        if name == "jeepney" or name.startswith("jeepney."):
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None


sys.meta_path.insert(0, NoJeepney())
from holdingpen.cli.holdingpen import main
sys.exit(main())
"""


@needs_root
def test_without_jeepney_the_allow_list_decides_and_the_log_names_the_package(bindir, shared_tmp):
    bin_without = shared_tmp / "bin"
    bin_without.mkdir()
    shutil.copy(bindir / "gatekeeper", bin_without / "gatekeeper")
    launcher = bin_without / "holdingpen"
    repo = str(Path(__file__).resolve().parents[2])
    launcher.write_text(LAUNCHER.format(python=sys.executable, repo=repo))
    launcher.chmod(0o755)
    bin_without.chmod(0o755)
    config = write_config(shared_tmp / "pool.toml", memory_count=2, size="1M",
                          extra='[authorize]\nusers = ["nobody"]\n')
    p = Pen(bin_without, shared_tmp, config)
    try:
        p.wait_full()
        done = p.run([*nobody(), "gatekeeper", "--strict", "true"], timeout=20)
        assert (done.returncode, done.stderr) == (0, "")
        assert ("no-polkit: polkit cannot be asked: the D-Bus library jeepney is missing; "
                "install it with: apt install python3-jeepney; deciding by the allow-list") \
            in p.logged()
        assert p.run([*nobody(), "gatekeeper", "--strict", "true"], timeout=20).returncode == 0
        assert p.logged().count("no-polkit:") == 1
    finally:
        assert p.stop() == 0
