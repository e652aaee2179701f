"""The image recipe: one Dockerfile for the public base and for the local debootstrap base.

The image itself is built and smoke-tested by deploy/image/build-and-smoke.sh, run by .ci/run.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "deploy" / "image" / "build-and-smoke.sh"


def test_dockerfile_base_is_a_build_arg_defaulting_to_the_public_image() -> None:
    text = (REPO / "Dockerfile").read_text()
    arg = re.search(r"^ARG BASE=(\S+)$", text, re.MULTILINE)
    assert arg is not None
    assert arg.group(1).startswith("python:3.11")
    froms = re.findall(r"^FROM (\S+)", text, re.MULTILINE)
    assert froms == ["${BASE}", "${BASE}"]
    assert text.index("ARG BASE=") < text.index("FROM ")
    assert re.search(r"^USER 10001:20$", text, re.MULTILINE)
    assert 'ENTRYPOINT ["linehost"]' in text


def test_build_script_is_valid_bash_and_run_by_ci() -> None:
    assert os.access(SCRIPT, os.X_OK)
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)
    script = SCRIPT.read_text()
    steps = (
        "debootstrap --variant=minbase",
        '--build-arg "BASE=$BASE_IMAGE"',
        "linehost --version",
        "linehost demo --no-hold",
        "linehost doctor --config",
    )
    for step in steps:
        assert step in script, step
    assert "bash deploy/image/build-and-smoke.sh" in (REPO / ".ci" / "run").read_text()
