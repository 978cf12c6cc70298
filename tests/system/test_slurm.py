"""The Slurm batch workflows (workflows/slurm/) and Nipype's SLURMGraph plugin.

The first tests run the job scripts with plain bash and fake Slurm variables (no cluster).
The others start a real single-node Slurm (Debian slurm-wlm + munge; .ci/slurm_start.sh, root
only), submit the participant job array over the 3-participant reference dataset plus the
dependent group job with workflows/slurm/submit.sh (the app from this venv instead of an
image), then run one participant with ``--plugin SLURMGraph``. Every wait has a deadline after
which the jobs are cancelled, and the daemons are stopped by PID whatever happens.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import require_program

pytestmark = pytest.mark.slurm

ROOT = Path(__file__).resolve().parents[2]
SLURM_DIR = ROOT / "workflows" / "slurm"
VENV_BIN = Path(sys.prefix) / "bin"
QUEUE_TIMEOUT_S = 600


# --------------------------------------------------------------------------------------------
# Job scripts without a cluster
# --------------------------------------------------------------------------------------------

def _fake_task_env(tmp_path: Path, bids_dir: Path, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM", "AGQUANT"))}
    env.update({
        "AGQUANT_SLURM_DIR": str(SLURM_DIR),
        "AGQUANT_BIDS_DIR": str(bids_dir),
        "AGQUANT_OUTPUT_DIR": str(tmp_path / "out"),
        "AGQUANT_SCRATCH": str(tmp_path / "scratch"),
        "AGQUANT_LOG_DIR": str(tmp_path / "logs"),
        "AGQUANT_CMD": "echo bids-agquant",
        "SLURM_JOB_ID": "101",
        "SLURM_ARRAY_JOB_ID": "100",
        "SLURM_ARRAY_TASK_ID": "1",
        "SLURM_CPUS_PER_TASK": "2",
        "SLURM_MEM_PER_NODE": "4096",
    })
    env.update(extra)
    return env


@pytest.fixture
def tiny_bids(tmp_path):
    """A participants.tsv is all the scripts read (CRLF and a 'sub-' prefix on purpose)."""
    bids = tmp_path / "bids"
    bids.mkdir()
    (bids / "participants.tsv").write_text(
        "age\tparticipant_id\r\n50\tsub-A\r\n61\tsub-B\r\n72\tsub-C\r\n")
    return bids


def test_participant_script_picks_the_task_participant_and_maps_resources(tmp_path, tiny_bids):
    env = _fake_task_env(tmp_path, tiny_bids, AGQUANT_AGENT="gadoterate",
                         AGQUANT_EXTRA_ARGS="--sloppy --omp-nthreads 2")
    proc = subprocess.run(["bash", str(SLURM_DIR / "participant.sbatch"), "--r1", "3.4"],
                          env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("bids-agquant ")][0]
    work = tmp_path / "scratch" / "agquant-100-1"
    assert line == (f"bids-agquant {tiny_bids} {tmp_path / 'out'} participant "
                    f"--participant-label B -w {work}/nipype --nprocs 2 --mem-gb 3.6 "
                    "--agent gadoterate --sloppy --omp-nthreads 2 --r1 3.4")
    assert not work.exists(), "the per-task work directory must be removed"
    status = (tmp_path / "logs" / "participant_status.tsv").read_text().split("\t")
    assert status[:4] == ["sub-B", "100", "1", "0"]


def test_participant_script_reports_the_app_exit_code_and_a_bad_task(tmp_path, tiny_bids):
    env = _fake_task_env(tmp_path, tiny_bids, AGQUANT_CMD="false")
    proc = subprocess.run(["bash", str(SLURM_DIR / "participant.sbatch")], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "sub-B finished with exit code 1" in proc.stdout
    env = _fake_task_env(tmp_path, tiny_bids, SLURM_ARRAY_TASK_ID="3")
    proc = subprocess.run(["bash", str(SLURM_DIR / "participant.sbatch")], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 64
    assert "only 3 participants" in proc.stderr


def test_participant_script_runs_the_image_with_apptainer_and_binds(tmp_path, tiny_bids):
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    fake = fake_bin / "apptainer"
    fake.write_text('#!/bin/sh\nprintf "%s\\n" "$@" > "$AGQUANT_FAKE_ARGS"\n')
    fake.chmod(0o755)
    args_file = tmp_path / "args.txt"
    participants = tmp_path / "batch.txt"
    participants.write_text("# batch 1\nsub-C\n\nA\n")
    env = _fake_task_env(tmp_path, tiny_bids, AGQUANT_IMAGE="/images/bids-agquant.sif",
                         AGQUANT_CONTOURS=str(tmp_path / "contours"),
                         AGQUANT_PARTICIPANTS=str(participants), SLURM_ARRAY_TASK_ID="0",
                         AGQUANT_FAKE_ARGS=str(args_file),
                         PATH=f"{fake_bin}{os.pathsep}{os.environ['PATH']}")
    env.pop("AGQUANT_CMD")
    proc = subprocess.run(["bash", str(SLURM_DIR / "participant.sbatch")], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    args = args_file.read_text().splitlines()
    work = tmp_path / "scratch" / "agquant-100-0"
    assert args[:2] == ["exec", "--cleanenv"]
    binds = [args[i + 1] for i, a in enumerate(args) if a == "-B"]
    assert binds == [f"{work}/tmp:/tmp", f"{tiny_bids}:{tiny_bids}:ro",
                     f"{tmp_path / 'out'}:{tmp_path / 'out'}", f"{work}:{work}",
                     f"{tmp_path / 'contours'}:{tmp_path / 'contours'}:ro"]
    assert args[args.index("--home") + 1] == f"{work}/home"
    image = args.index("/images/bids-agquant.sif")
    assert args[image + 1:image + 5] == ["bids-agquant", str(tiny_bids), str(tmp_path / "out"),
                                         "participant"]
    assert args[args.index("--participant-label") + 1] == "C"
    assert args[args.index("--contours") + 1] == str(tmp_path / "contours")


def test_submit_dry_run_sizes_the_array_to_the_participant_list(tmp_path, tiny_bids):
    site = tmp_path / "site.env"
    site.write_text(f"AGQUANT_BIDS_DIR={tiny_bids}\nAGQUANT_OUTPUT_DIR={tmp_path}/out\n"
                    "AGQUANT_CPUS=6\nAGQUANT_MEM=12G\nAGQUANT_ARRAY_LIMIT=2\n"
                    f"AGQUANT_LOG_DIR={tmp_path}/logs\n")
    proc = subprocess.run([str(SLURM_DIR / "submit.sh"), "--dry-run", str(site)],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "--array=0-2%2" in proc.stdout
    assert "--cpus-per-task=6 --mem=12G" in proc.stdout
    assert "--dependency=afterok:" in proc.stdout and "--kill-on-invalid-dep=yes" in proc.stdout
    lists = list((tmp_path / "logs").glob("participants-*.txt"))
    assert len(lists) == 1 and lists[0].read_text().split() == ["A", "B", "C"]


def test_site_configuration_example_is_complete():
    """The example names every setting the scripts read and is valid shell."""
    example = SLURM_DIR / "site.env.example"
    proc = subprocess.run(["bash", "-n", str(example)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    used = set()
    for script in ("common.sh", "participant.sbatch", "group.sbatch", "submit.sh"):
        used |= set(re.findall(r"\bAGQUANT_[A-Z_]+", (SLURM_DIR / script).read_text()))
    internal = {"AGQUANT_SLURM_DIR", "AGQUANT_RUN", "AGQUANT_OPTS"}
    missing = sorted(used - internal - set(re.findall(r"\bAGQUANT_[A-Z_]+", example.read_text())))
    assert not missing, f"site.env.example does not document {missing}"


# --------------------------------------------------------------------------------------------
# A real single-node Slurm cluster
# --------------------------------------------------------------------------------------------

class Cluster:
    def __init__(self, state: Path):
        self.state = state
        self.env = {**os.environ, "SLURM_CONF": str(state / "slurm.conf")}
        self.env.pop("LOGNAME", None)  # unset in batch shells here (machine-notes §7)

    def run(self, *args: str, timeout: float = 60, check: bool = True, **kw):
        proc = subprocess.run(list(args), env=self.env, capture_output=True, text=True,
                              timeout=timeout, **kw)
        if check and proc.returncode != 0:
            raise AssertionError(f"{args} failed ({proc.returncode}):\n{proc.stdout}\n"
                                 f"{proc.stderr}")
        return proc

    def queue(self) -> list[str]:
        return self.run("squeue", "-h", "-o", "%i %T %r").stdout.split("\n")[:-1]

    def wait_for_empty_queue(self, timeout: float = QUEUE_TIMEOUT_S) -> float:
        """Poll squeue until no job is left; on timeout cancel everything and fail."""
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            if not self.queue():
                return time.monotonic() - start
            time.sleep(2)
        left = self.queue()
        self.run("scancel", "--full", "--user", "root", check=False)
        raise AssertionError(f"jobs still queued after {timeout} s (cancelled): {left}")

    def job_states(self, job_id: str) -> list[tuple[str, str]]:
        """(JobState, ExitCode) of a job, or of every task of an array job."""
        out = self.run("scontrol", "show", "job", "-o", job_id).stdout
        return re.findall(r"JobState=(\S+).*?ExitCode=(\S+)", out)

    def logs(self) -> str:
        parts = []
        for name in ("slurmctld.log", "slurmd.log"):
            path = self.state / "log" / name
            if path.exists():
                parts.append(f"--- {name}\n" + "\n".join(path.read_text().splitlines()[-30:]))
        return "\n".join(parts)


def _require_root() -> None:
    if os.geteuid() == 0:
        return
    message = "a local Slurm cluster needs root (slurmd starts jobs as their user)"
    if os.environ.get("BIDS_AGQUANT_REQUIRE_SYSTEM") == "1":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    require_program("slurmctld", "slurmd", "munged", "munge", "sbatch", "squeue", "scancel",
                    "scontrol", "sinfo")
    _require_root()
    state = tmp_path_factory.mktemp("slurm")
    try:
        subprocess.run([str(ROOT / ".ci" / "slurm_start.sh"), str(state)], check=True,
                       capture_output=True, text=True, timeout=120)
        yield Cluster(state)
    except subprocess.CalledProcessError as exc:
        pytest.fail(f"could not start Slurm:\n{exc.stdout}\n{exc.stderr}")
    finally:
        subprocess.run([str(ROOT / ".ci" / "slurm_stop.sh"), str(state)], check=False,
                       capture_output=True, timeout=180)
        for name in ("slurmctld.pid", "slurmd.pid", "munged.pid"):
            assert not (state / name).exists(), f"{name} left behind: daemon not stopped"


def _participants(bids_dir: Path) -> list[str]:
    return pd.read_csv(bids_dir / "participants.tsv", sep="\t")["participant_id"].tolist()


def test_job_array_runs_every_participant_then_the_group_job(cluster, dro2mm, tmp_path):
    app = VENV_BIN / "bids-agquant"
    assert app.exists(), f"{app}: the test runs the app from the test venv"
    out, logs, scratch = tmp_path / "out", tmp_path / "logs", tmp_path / "scratch"
    site = tmp_path / "site.env"
    site.write_text("\n".join([
        f"AGQUANT_BIDS_DIR={dro2mm.bids_dir}",
        f"AGQUANT_OUTPUT_DIR={out}",
        f"AGQUANT_CONTOURS={dro2mm.contours_dir}",
        "AGQUANT_BASELINE_SESSION=D0",
        f"AGQUANT_VENV={sys.prefix}",
        # Two cores here: one process per task, so that two participants run at once.
        "AGQUANT_CPUS=1", "AGQUANT_MEM=3G", "AGQUANT_TIME=00:15:00",
        "AGQUANT_GROUP_MEM=1G", "AGQUANT_GROUP_TIME=00:05:00",
        'AGQUANT_EXTRA_ARGS="--sloppy"',
        f"AGQUANT_LOG_DIR={logs}", f"AGQUANT_SCRATCH={scratch}", "",
    ]))
    start = time.monotonic()
    proc = cluster.run(str(SLURM_DIR / "submit.sh"), str(site), cwd=tmp_path)
    array_job = re.search(r"participant array job: (\d+)", proc.stdout).group(1)
    group_job = re.search(r"group job: (\d+)", proc.stdout).group(1)
    try:
        cluster.wait_for_empty_queue()
    finally:
        elapsed = time.monotonic() - start
        print(f"job array + group job: {elapsed:.0f} s")
    participants = _participants(dro2mm.bids_dir)
    job_logs = "\n".join(p.read_text() for p in sorted(logs.glob("*.out")))
    tasks = cluster.job_states(array_job)
    assert len(tasks) == len(participants), job_logs[-5000:]
    assert tasks == [("COMPLETED", "0:0")] * len(participants), job_logs[-5000:] + cluster.logs()
    assert cluster.job_states(group_job) == [("COMPLETED", "0:0")], job_logs[-5000:]

    for pid in participants:
        tables = sorted((out / pid).glob("ses-*/anat/*_lesions.tsv"))
        assert tables, f"{pid}: no lesion table"
        for table in tables:
            assert len(pd.read_csv(table, sep="\t")) > 0, table
        assert f"{pid} on " in job_logs and "1 CPUs, 2.7 GB" in job_logs
    group = pd.read_csv(out / "group_lesions.tsv", sep="\t")
    assert set(group["participant_id"]) == set(participants)
    assert set(pd.read_csv(out / "group_participants.tsv", sep="\t")["participant_id"]) == set(
        participants)
    assert json.loads((out / "dataset_description.json").read_text())["DatasetType"] == (
        "derivative")
    status = pd.read_csv(logs / "participant_status.tsv", sep="\t", header=None)
    assert sorted(status[0]) == participants and set(status[3]) == {0}
    assert not list(scratch.glob("agquant-*")), "work directories left on scratch"


def test_slurmgraph_plugin_runs_a_participant_as_dependent_jobs(cluster, dro2mm, tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    # One post-agent session keeps the graph (one batch job per node) small.
    start = time.monotonic()
    proc = cluster.run(
        str(VENV_BIN / "bids-agquant"), str(dro2mm.bids_dir), str(out), "participant",
        "--participant-label", "03", "--session-label", "D1", "-w", str(work), "--sloppy",
        "--skip-bids-validation", "--plugin", "SLURMGraph",
        "--plugin-args", json.dumps({"sbatch_args": "--mem=1G -c1 --time=00:10:00"}),
        timeout=300, check=False)
    submitted = time.monotonic() - start
    assert proc.returncode == 0, proc.stdout + proc.stderr
    queued = cluster.queue()
    batch_scripts = list(work.rglob("batch/batchscript_*.sh"))
    assert batch_scripts, "SLURMGraph wrote no batch scripts"
    try:
        drained = cluster.wait_for_empty_queue()
    finally:
        print(f"SLURMGraph: submitted in {submitted:.0f} s ({len(batch_scripts)} jobs, "
              f"{len(queued)} queued right after), total {time.monotonic() - start:.0f} s")
    assert drained >= 0
    crashes = list(work.rglob("crash-*")) + list((out / "sub-03").rglob("crash-*"))
    job_errors = "\n".join(p.read_text()[-2000:] for p in work.rglob("batch/*.e")
                           if p.stat().st_size)
    assert not crashes, f"crashed nodes: {crashes}\n{job_errors}"
    anat = out / "sub-03" / "ses-D1" / "anat"
    for suffix in ("desc-vfa_lesions.tsv", "desc-vfa_R1map.nii.gz",
                   "space-D0_desc-vfa_Gdconc.nii.gz"):
        assert (anat / f"sub-03_ses-D1_{suffix}").exists(), f"{suffix} missing\n{job_errors}"
    assert not (out / "sub-03" / "ses-D8").exists(), "--session-label D1 was ignored"
    # the jobs really went through Slurm: one output file per node job
    assert len(list(work.rglob("batch/*.o"))) == len(batch_scripts)
    shutil.rmtree(work, ignore_errors=True)
