"""The release machinery that cannot run here, read as far as it can be: the GitHub
Actions workflows (what triggers them, what they run and publish, every action pinned)
and the image's Dockerfile (one file for every architecture, non-root, a health check,
the config from a mounted file). actionlint is not installable here (its Python package
downloads the binary at build time), so these checks stand in for it."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Final

import yaml

ROOT: Final = Path(__file__).resolve().parent.parent
WORKFLOWS: Final = ROOT / ".github" / "workflows"


def workflow(name: str) -> dict[str, Any]:
    document: dict[Any, Any] = yaml.safe_load((WORKFLOWS / name).read_text())
    document["on"] = document.pop(True, document.get("on"))  # YAML 1.1 reads `on` as true
    return document


def steps(job: dict[str, Any]) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = job["steps"]
    return found


def test_ci_runs_what_ci_run_runs_on_pushes_and_pull_requests() -> None:
    ci = workflow("ci.yml")
    assert set(ci["on"]) == {"push", "pull_request"}
    (job,) = ci["jobs"].values()
    assert any(step.get("run") == "bash .ci/run" for step in steps(job))


def test_a_version_tag_publishes_the_package_the_image_and_the_addon() -> None:
    release = workflow("release.yml")
    assert release["on"] == {"push": {"tags": ["v*"]}}
    jobs = release["jobs"]
    assert jobs["pypi"]["permissions"] == {"id-token": "write"}, "trusted publishing"
    assert any(
        "pypa/gh-action-pypi-publish" in step.get("uses", "") for step in steps(jobs["pypi"])
    )
    build = next(s for s in steps(jobs["image"]) if "build-push-action" in s.get("uses", ""))
    assert build["with"]["file"] == "packaging/Dockerfile"
    assert set(build["with"]["platforms"].split(",")) == {"linux/amd64", "linux/arm64"}
    addon_arches = yaml.safe_load((ROOT / "addon" / "config.yaml").read_text())["arch"]
    assert jobs["addon"]["strategy"]["matrix"]["arch"] == addon_arches
    assert jobs["addon"]["needs"] == "pypi", "the add-on image installs the published package"
    dist = " ".join(step.get("run", "") for step in steps(jobs["dist"]))
    assert "python -m build" in dist
    assert "twine check --strict" in dist


def test_every_action_is_pinned_to_a_release() -> None:
    for path in sorted(WORKFLOWS.glob("*.yml")):
        document = workflow(path.name)
        for job in document["jobs"].values():
            for step in steps(job):
                if "uses" in step:
                    assert re.fullmatch(
                        r"[\w.-]+/[\w.-]+@(v\d+|release/v\d+|\d{4}\.\d+\.\d+)", step["uses"]
                    ), (path.name, step["uses"])


def test_the_image_builds_for_every_architecture_from_one_file() -> None:
    dockerfile = (ROOT / "packaging" / "Dockerfile").read_text()
    instructions = [line for line in dockerfile.splitlines() if line and not line.startswith("#")]
    text = "\n".join(instructions)
    assert not re.search(r"amd64|arm64|aarch64|x86_64", text), "no step for one architecture"
    assert re.search(r"^USER (?!root)\w+", text, re.MULTILINE)
    assert "HEALTHCHECK" in text
    assert '"--config", "/etc/tcp-multiplexer/site.toml"' in text
    assert "[serial,publish]" in text
