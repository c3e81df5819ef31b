"""The OCI distribution-spec's own conformance suites against ``cairn registry serve``.

The suites are prebuilt in ``../shared/tools/oci-conformance`` (or
``$CAIRN_CONFORMANCE``); ``scripts/conformance.sh`` starts a fresh server on
an empty store, runs both, and exits 1 on any failed spec or a server
traceback. Where the folder is absent there is nothing to run.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

SUITES = Path(os.environ.get("CAIRN_CONFORMANCE", REPO.parent / "shared/tools/oci-conformance"))


@pytest.mark.skipif(not (SUITES / "run.sh").is_file(), reason=f"no conformance suites at {SUITES}")
def test_both_conformance_suites_pass_in_full(tmp_path: Path) -> None:
    env = {**os.environ, "CAIRN": str(Path(sys.executable).parent / "cairn")}
    done = subprocess.run(
        ["bash", str(REPO / "scripts/conformance.sh"), str(SUITES), str(tmp_path / "reports")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "v1.1.1: SUCCESS! -- 74 Passed | 0 Failed" in done.stdout, done.stdout
    assert ", 0 failed" in done.stdout, done.stdout
