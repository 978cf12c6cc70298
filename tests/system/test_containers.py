"""Container recipes: lint and parse them (default run), build and run the image (``-m container``).

The ``container`` test builds the Docker image with podman (Debian packages) on a Debian 12 base
made by debootstrap (.ci/base_image.sh; Docker Hub is not reachable from CI), with the
workarounds of machine-notes.md §6, then runs ``--version`` and the reference dataset inside
the image with ``--network none --read-only`` as the image's non-root user. It takes several
minutes, so it is deselected by default; CI runs it separately:
``python -m pytest -m container tests/system/test_containers.py``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
import tomllib
from pathlib import Path

import pytest
from conftest import require_program
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
SINGULARITY_DEF = ROOT / "Singularity.def"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
VERSION = PYPROJECT["project"]["version"]


# --------------------------------------------------------------------------------------------
# Recipes (fast, offline)
# --------------------------------------------------------------------------------------------

def test_dockerfile_passes_hadolint():
    require_program("hadolint")
    proc = subprocess.run(["hadolint", "--config", str(ROOT / ".hadolint.yaml"), str(DOCKERFILE)],
                          capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_dockerfile_follows_the_image_contract():
    text = DOCKERFILE.read_text()
    assert re.search(r"^ARG BASE_IMAGE=python:3\.11-slim", text, re.M), "base image build ARG"
    assert re.search(r"^FROM \$\{BASE_IMAGE\}", text, re.M)
    assert "pip install -c constraints.txt ." in text, "pinned install, no test extras"
    assert re.search(r"^ARG VERSION=(\S+)$", text, re.M).group(1) == VERSION
    user = re.findall(r"^USER (\S+)$", text, re.M)
    assert user and user[-1].split(":")[0] not in ("0", "root"), "runs as a non-root user"
    for env in ("OMP_NUM_THREADS=1", "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS=1", "NIPYPE_NO_ET=1",
                "HOME=/home/agquant"):
        assert env in text, env
    for label in ("title", "version", "licenses", "source", "revision", "created"):
        assert f"org.opencontainers.image.{label}=" in text, label
    assert re.search(r'^ENTRYPOINT \["/opt/venv/bin/bids-agquant"\]$', text, re.M)


def test_constraints_pin_every_dependency_within_pyproject_bounds():
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            pins[name.lower().replace("_", "-")] = Version(version)
    assert "bids-agquant" not in pins
    for spec in PYPROJECT["project"]["dependencies"]:
        req = Requirement(spec)
        name = req.name.lower().replace("_", "-")
        assert name in pins, f"{name} is not pinned in constraints.txt"
        assert req.specifier.contains(pins[name]), f"{name}=={pins[name]} violates {spec}"


def test_singularity_recipe_parses_and_runs_the_app():
    require_program("spython")
    proc = subprocess.run(["spython", "recipe", str(SINGULARITY_DEF)], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert 'exec /opt/venv/bin/bids-agquant "$@"' in proc.stdout

    from spython.main.parse.parsers import SingularityParser

    recipe = SingularityParser(str(SINGULARITY_DEF)).recipe["spython-base"]
    assert recipe.fromHeader == f"bids-agquant:{VERSION}"
    assert re.search(r"^Bootstrap: docker(-daemon)?$", SINGULARITY_DEF.read_text(), re.M)
    assert recipe.cmd == 'exec /opt/venv/bin/bids-agquant "$@"'
    test_section = SINGULARITY_DEF.read_text().split("%test", 1)[1].split("\n%", 1)[0]
    assert "bids-agquant --version" in test_section
    assert "bids-agquant-demo" in test_section and "--participants 1" in test_section
    assert f"org.opencontainers.image.version {VERSION}" in recipe.labels


# --------------------------------------------------------------------------------------------
# Build and run the image with podman (CI: python -m pytest -m container)
# --------------------------------------------------------------------------------------------

PODMAN = ["podman", "--runtime", "runc"]
# No CAP_SYS_RESOURCE here: the runtime cannot raise these limits (machine-notes.md §6).
ULIMITS = ["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1000:1000"]
IMAGE = os.environ.get("AGQUANT_TEST_IMAGE", f"localhost/bids-agquant:{VERSION}")
BASE_IMAGE = os.environ.get("AGQUANT_BASE_IMAGE", "localhost/debian:bookworm")
CA_BUNDLE = os.environ.get("AGQUANT_BUILD_CA_BUNDLE", "/etc/ssl/certs/ca-certificates.crt")
TIMINGS: dict[str, str] = {}


def _run(cmd, timeout, **kw):
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, cmd))} failed ({proc.returncode}):\n"
                             f"{proc.stdout[-6000:]}\n{proc.stderr[-6000:]}")
    return proc


def _run_image(*args, volumes=(), entrypoint=None, timeout=900):
    cmd = [*PODMAN, "run", "--rm", "--network", "none", "--read-only", *ULIMITS,
           "--user", "1000:1000"]
    for volume in volumes:
        cmd += ["-v", volume]
    if entrypoint:
        cmd += ["--entrypoint", entrypoint]
    return _run([*cmd, IMAGE, *args], timeout=timeout)


@pytest.fixture(scope="module")
def image():
    require_program("podman", "runc", "debootstrap")
    if os.geteuid() != 0:
        message = "the podman build here needs root (rootful podman, debootstrap)"
        if os.environ.get("BIDS_AGQUANT_REQUIRE_SYSTEM") == "1":
            pytest.fail(message)
        pytest.skip(message)
    start = time.monotonic()
    if BASE_IMAGE.startswith("localhost/"):
        _run([str(ROOT / ".ci" / "base_image.sh"), BASE_IMAGE], timeout=900)
    TIMINGS["base image"] = f"{time.monotonic() - start:.0f} s"
    build = [*PODMAN, "build", "--network", "host", *ULIMITS,
             "--build-arg", f"BASE_IMAGE={BASE_IMAGE}", "--build-arg", f"VERSION={VERSION}",
             "--build-arg", f"BUILD_DATE={time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}",
             "-t", IMAGE]
    if Path(CA_BUNDLE).is_file():
        # The machine's TLS proxy: pip in the build must trust its CA (build time only).
        build += ["-v", f"{CA_BUNDLE}:/run/ci-ca.crt:ro", "--build-arg",
                  "PIP_CERT=/run/ci-ca.crt"]
    start = time.monotonic()
    _run([*build, str(ROOT)], timeout=3600)
    TIMINGS["image build"] = f"{time.monotonic() - start:.0f} s"
    yield IMAGE
    print("\ncontainer timings: " + ", ".join(f"{k} {v}" for k, v in TIMINGS.items()))


@pytest.mark.container
def test_image_metadata(image):
    info = json.loads(_run([*PODMAN, "image", "inspect", image], timeout=60).stdout)[0]
    config = info["Config"]
    assert config["User"] == "1000:1000"
    assert config["Entrypoint"] == ["/opt/venv/bin/bids-agquant"]
    labels = config["Labels"]
    assert labels["org.opencontainers.image.version"] == VERSION
    assert labels["org.opencontainers.image.base.name"] == BASE_IMAGE
    env = dict(item.split("=", 1) for item in config["Env"])
    assert env["OMP_NUM_THREADS"] == "1" and env["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] == "1"
    TIMINGS["image size"] = f"{info['Size'] / 1e9:.2f} GB"


@pytest.mark.container
def test_image_runs_version_and_demo_entry_points_offline_as_non_root(image):
    start = time.monotonic()
    assert _run_image("--version").stdout.strip() == f"bids-agquant {VERSION}"
    TIMINGS["--version"] = f"{time.monotonic() - start:.1f} s"
    assert _run_image("-u", entrypoint="id").stdout.strip() == "1000"
    assert "reference dataset" in _run_image("--help", entrypoint="bids-agquant-demo").stdout


@pytest.mark.container
def test_image_processes_the_reference_dataset(image, tmp_path):
    from bids_agquant.dro import make_dataset

    dro = make_dataset(tmp_path / "bids", participants=1, resolution_mm=2)
    out, work = tmp_path / "out", tmp_path / "work"
    for path in (out, work):
        path.mkdir()
        os.chown(path, 1000, 1000)  # the image's user; the input stays root's and read-only
    volumes = [f"{dro.bids_dir}:/data:ro", f"{out}:/out", f"{work}:/work"]
    start = time.monotonic()
    _run_image("/data", "/out", "participant", "-w", "/work", "--nprocs", "2",
               volumes=volumes, timeout=1800)
    TIMINGS["participant level (1 participant, 2 mm)"] = f"{time.monotonic() - start:.0f} s"
    start = time.monotonic()
    _run_image("/data", "/out", "group", volumes=volumes, timeout=600)
    TIMINGS["group level"] = f"{time.monotonic() - start:.0f} s"

    tables = sorted(out.glob("sub-01/ses-*/anat/*_lesions.tsv"))
    assert tables, sorted(p.relative_to(out) for p in out.rglob("*"))
    assert {t.parent.parent.name for t in tables} == {"ses-D1", "ses-D8"}
    assert (out / "group_lesions.tsv").is_file() and (out / "group_participants.tsv").is_file()
    assert all(t.stat().st_uid == 1000 for t in tables), "written by the non-root user"
    generated = json.loads((out / "dataset_description.json").read_text())["GeneratedBy"][0]
    assert generated["Container"] == {"Type": "docker", "Tag": f"bids-agquant:{VERSION}"}
