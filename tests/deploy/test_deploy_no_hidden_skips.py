"""A broken project module fails the deploy tests; it never turns them into skips or passes.

Runs the deploy tests that use mofe_serve, model_registry and training in a child pytest,
with those packages shadowed by ones whose import fails the way a lost dependency makes it
fail (ModuleNotFoundError, which pytest.importorskip turns into a skip), and reads its JUnit
report.
"""

from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET

from deploy_support import REPO

SHADOWED = ("mofe_serve", "model_registry", "training")
# Every non-engine deploy test file that imports one of them.
FILES = ("test_deploy_commands.py", "test_deploy_probes.py", "test_deploy_metrics.py")


def test_a_broken_project_module_fails_instead_of_skipping(tmp_path):
    shadow = tmp_path / "shadow"
    for package in SHADOWED:
        (shadow / package).mkdir(parents=True)
        (shadow / package / "__init__.py").write_text(
            "import a_dependency_lost_on_purpose_by_test_deploy_no_hidden_skips\n")
    report = tmp_path / "junit.xml"
    # -P: no current directory on sys.path, so the shadow packages come first.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(shadow), str(REPO)])}
    proc = subprocess.run(
        [sys.executable, "-P", "-m", "pytest", "-q", "-p", "no:cacheprovider",
         f"--junitxml={report}", "--continue-on-collection-errors", "-m", "not engine",
         *(str(REPO / "tests" / "deploy" / f) for f in FILES)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert report.exists(), proc.stdout[-3000:] + proc.stderr[-3000:]
    outcomes: dict[str, set[str]] = {f: set() for f in FILES}
    for case in ET.parse(report).iter("testcase"):
        kinds = {child.tag for child in case} & {"failure", "error", "skipped"} or {"passed"}
        # "tests.deploy.test_x" (collection error) or classname "tests.deploy.test_x"
        where = f"{case.get('classname')}.{case.get('name')}"
        name = next(f for f in FILES if f".{f.removesuffix('.py')}." in f"{where}.")
        outcomes[name] |= kinds
    skipped = {f for f, kinds in outcomes.items() if "skipped" in kinds}
    assert not skipped, f"broken project modules were skipped in {sorted(skipped)}"
    for name, kinds in outcomes.items():
        assert kinds & {"failure", "error"}, f"{name}: nothing failed with the modules broken"
    assert proc.returncode != 0
    # The probe test must not fall back to comparing a hand-written route list with itself.
    probe = [c for c in ET.parse(report).iter("testcase")
             if c.get("name") == "test_probe_and_scrape_paths_are_serve_routes"]
    assert probe and all(c.find("failure") is not None or c.find("error") is not None
                         for c in probe)
