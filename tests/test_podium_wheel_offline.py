"""Podium's own wheel, which the gateway nodes install, builds on a control machine that has no
network at all (an air-gapped site's): with the build backend installed beside Podium."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from podium.own_wheel import _package_files
from podium.render import REPO

BUILD = """
import sys
from pathlib import Path
from podium.own_wheel import podium_wheel
print(podium_wheel(Path(sys.argv[1])))
"""


def test_podiums_wheel_builds_with_no_network(tmp_path: Path) -> None:
    if shutil.which("unshare") is None:
        pytest.skip("unshare is missing: apt-get install util-linux")
    done = subprocess.run(["unshare", "--net", sys.executable, "-c", BUILD, str(tmp_path / "wheels")],
                          capture_output=True, text=True, cwd=REPO, timeout=600,
                          env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PIP_NO_INDEX": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    wheel = Path(done.stdout.strip().splitlines()[-1])
    names = zipfile.ZipFile(wheel).namelist()
    assert "podium/services/gateway/server.py" in names
    # The console's templates and stylesheet are package data: a gateway node serves them.
    assert "podium/services/gateway/console_templates/keys.html" in names
    assert "podium/services/gateway/console_templates/console.css" in names
    # Exactly the package as it is now: nothing left over from an earlier build of the checkout.
    package = REPO / "src"
    shipped = {n for n in names if n.startswith("podium/")}
    assert shipped == {p.relative_to(package).as_posix() for p in _package_files(package / "podium")}
