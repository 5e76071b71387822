"""Training runs as jobs of a real SLURM (tools/slurm_up.sh: one node, this machine): a job's metrics, a
requeued job resuming, a warned job saving first, a failing job's error, a 2-task DDP job.

Skipped, with the reason, where no SLURM can be reached (a laptop); `bash test.sh` (what CI runs) starts one and sets
STUDYLIB_REQUIRE_SLURM=1, so CI fails instead of skipping.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from studylib import config, launch
from studylib.launch import record, slurm

REPO = Path(__file__).resolve().parents[1]
PARAMS = REPO / "params.yaml"
SMALL_DATA = "data.synthetic={num_train: 8, num_val: 4, num_unlabeled: 0}"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
TIMING = {"train/time_s", "train/iter_time_s", "train/peak_mem_gb", "infer/time_per_image_s"}
ITERS = 120  # long enough that a requeue lands mid-run: SLURM kills a requeued job ~5 s later (~0.1 s an iteration)


def train_cmd(out: Path, data: Path, *extra: str, iters: int = ITERS, every: int = 4) -> list[str]:
    return [
        sys.executable,
        "-m",
        "studylib.train",
        "--params",
        str(PARAMS),
        "--experiment",
        "smoke",
        "--out",
        str(out),
        "--set",
        f"data.root={data}",
        "--set",
        SMALL_DATA,
        "--set",
        "train.deterministic=true",
        "--set",
        f"train.max_iters={iters}",
        "--set",
        f"train.checkpoint_every={every}",
        *extra,
    ]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[Path, Path]:
    """An uninterrupted local run (and the dataset every run here shares)."""
    tmp = tmp_path_factory.mktemp("reference")
    subprocess.run(train_cmd(tmp / "run", tmp / "data"), check=True, env=ENV, capture_output=True, timeout=600)
    return tmp / "run", tmp / "data"


def results(run: Path) -> tuple[dict, str]:
    metrics = json.loads((run / "metrics.json").read_text())
    return {k: v for k, v in metrics.items() if k not in TIMING}, (run / "history.csv").read_text()


def wait_for(condition, what: str, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def group_alive(pgid: int) -> bool:
    """Whether any process of group `pgid` (a killed one not yet reaped included) still exists."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def release(job_id: str) -> None:
    """A requeued job waits ~2 min (BeginTime) before it may start again: let it start now."""
    wait_for(lambda: slurm.job_state(job_id) == "PENDING", f"job {job_id} pending again")
    subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], check=True, capture_output=True)


def start_job(out: Path, data: Path, cluster: Path, *extra: str, **kw) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        train_cmd(out, data, "--launcher", "slurm", "--cluster", str(cluster), *extra, **kw),
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for(lambda: (record.read(out) or {}).get("job_id") or proc.poll() is not None, "the job id")
    assert proc.poll() is None, proc.communicate()
    return proc, record.read(out)["job_id"]


def test_a_requeued_job_resumes_from_its_checkpoint_and_ends_like_an_uninterrupted_run(tmp_path, cluster, reference):
    ref_run, data = reference
    out = tmp_path / "run"
    proc, job_id = start_job(out, data, cluster)
    wait_for(lambda: (out / "checkpoints" / "last.pth").is_file(), "the first checkpoint")
    subprocess.run(["scontrol", "requeue", job_id], check=True, capture_output=True)  # killed mid-training
    release(job_id)
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr
    rec = record.read(out)
    assert rec["launcher"] == "slurm" and rec["job_id"] == job_id and rec["nodes"] == 1 and rec["tasks"] == 1
    assert rec["state"] == "COMPLETED" and len(rec["attempts"]) >= 2, rec
    assert rec["attempts"][0]["state"] == "REQUEUED" and rec["attempts"][0]["start_iter"] == 0
    assert 0 < rec["attempts"][-1]["start_iter"] < ITERS and rec["attempts"][-1]["job_id"] == job_id
    assert f"resumed from {out / 'checkpoints' / 'last.pth'}" in Path(rec["log"]).read_text()
    assert results(out) == results(ref_run)  # same metrics, same loss and lr at every iteration
    assert json.loads(stdout)["bbox/AP"] == json.loads((ref_run / "metrics.json").read_text())["bbox/AP"]


def test_a_warned_job_saves_before_it_is_requeued(tmp_path, cluster, reference):
    """SLURM's warning (USR2, as before a time limit or pre-emption): a checkpoint at the next iteration,
    although the run's own checkpoints come only at its end; the requeued attempt starts there."""
    ref_run, data = reference
    out = tmp_path / "run"
    proc, job_id = start_job(out, data, cluster, every=1000)
    wait_for(
        lambda: (out / "history.csv").is_file() and len((out / "history.csv").read_text().splitlines()) > 3,
        "a few iterations",
    )
    subprocess.run(["scancel", "--signal=USR2", job_id], check=True, capture_output=True)
    release(job_id)
    _, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr
    rec = record.read(out)
    first, last = rec["attempts"][0], rec["attempts"][-1]
    assert first["state"] == "PREEMPTED" and last["state"] == "COMPLETED" and rec["state"] == "COMPLETED", rec
    assert 0 < last["start_iter"] < ITERS  # no periodic checkpoint before the end: the warning's
    assert results(out) == results(ref_run)


def test_a_failing_job_names_its_id_and_log(tmp_path, cluster, reference):
    _, data = reference
    out = tmp_path / "run"
    r = subprocess.run(
        train_cmd(out, data, "--set", "train.batch_size=16", "--launcher", "slurm", "--cluster", str(cluster)),
        env=ENV,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 1
    rec = record.read(out)
    log = Path(rec["log"])
    assert f"SLURM job {rec['job_id']} failed" in r.stderr and f"log: {log}" in r.stderr, r.stderr
    assert "give no full batch of 16" in r.stderr  # the job's own error
    assert log.is_file() and "give no full batch of 16" in log.read_text()
    assert rec["state"] == "FAILED" and rec["attempts"][-1]["state"] == "FAILED"


def test_a_two_task_job_trains_with_ddp_over_slurm(tmp_path, cluster, reference):
    _, data = reference
    two = tmp_path / "cluster.yaml"
    two.write_text("slurm: {tasks_per_node: 2, cpus_per_task: 1, time_min: 30, poll_s: 0.5}\n")
    out = tmp_path / "run"
    r = subprocess.run(
        train_cmd(out, data, "--launcher", "slurm", "--cluster", str(two), iters=2, every=2),
        env=ENV,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["train/world_size"] == 2 and metrics["train/global_batch"] == 2
    rec = record.read(out)
    assert rec["tasks"] == 2 and rec["tasks_per_node"] == 2 and len(rec["attempts"]) == 1
    assert sorted(p.name for p in (out / "slurm").glob("*_log.err")) == [f"{rec['job_id']}_{t}_log.err" for t in (0, 1)]


class DDPSteps(slurm.Task):
    """test_train's DDP check as a SLURM job: each task one process, the group from SLURM's environment."""

    def __init__(self, tmp: Path):
        import test_train

        self.tmp, self.out_dir, self.resume = tmp, tmp / "ddp", False
        self.setup, self.steps = test_train._setup, test_train._steps  # pickled by value: no tests/ in the job

    def start_iter(self) -> int:
        return 0

    def body(self, resume: bool):
        from studylib.engine.distributed import convert_sync_batchnorm, init_distributed
        from studylib.engine.optim import build_optimizer

        torch.set_num_threads(1)
        info = init_distributed("cpu")  # env:// from the variables the task exported
        cfg, model, lr, image, target = self.setup(self.tmp, 2)
        model = torch.nn.parallel.DistributedDataParallel(convert_sync_batchnorm(model, torch.device("cpu")))
        losses, grads = self.steps(model, build_optimizer(model, lr, cfg.train.weight_decay), [image], [target])
        return info.rank, info.world_size, losses, grads, {k: v.clone() for k, v in model.module.state_dict().items()}


def test_a_two_task_job_matches_one_process_as_ddp_does(tmp_path, cluster):
    """test_train's DDP check over SLURM: the same steps as torch's own 2-process group (mp.spawn, file://
    rendezvous), bit for bit, and the same losses as 1 process with both images."""
    import tempfile

    import cloudpickle
    import test_train
    import torch.multiprocessing as mp
    from submitit.core.utils import pickle_load

    from studylib.engine.optim import build_optimizer

    cfg, model, lr, image, target = test_train._setup(tmp_path, 1)  # generates the dataset once
    ref_losses, _ = test_train._steps(
        model, build_optimizer(model, lr, cfg.train.weight_decay), [image, image.clone()], [target, {**target}]
    )
    with tempfile.TemporaryDirectory() as d:
        spawned = mp.Manager().dict()
        mp.spawn(test_train._ddp_worker, args=(str(tmp_path), str(Path(d) / "init"), spawned), nprocs=2, join=True)
        spawned = dict(spawned)
    for module in (sys.modules[__name__], test_train):
        cloudpickle.register_pickle_by_value(module)  # the job cannot import the tests
    opts = launch.load_options(cluster).replace(tasks_per_node=2)
    task = DDPSteps(tmp_path)
    job_id = slurm.executor(task.out_dir / slurm.LOG_DIR, opts, "ddp-check").submit(task).job_id
    rank0 = slurm.wait(task.out_dir, job_id, 2, opts.poll_s)
    rank1 = pickle_load(slurm.log_paths(task.out_dir / slurm.LOG_DIR, job_id, 1).result_pickle)[1]
    assert (rank0[0], rank0[1], rank1[0]) == (0, 2, 1)
    for rank, job in ((0, rank0), (1, rank1)):
        losses, grads, state = spawned[rank]
        assert job[2] == losses  # the same losses as torch's own group, bit for bit
        assert all(torch.equal(job[4][k], v) for k, v in state.items())
        # 1 process: the first step's loss tightly; AdamW's sign-like steps amplify float noise after it
        assert job[2][0] == pytest.approx(ref_losses[0], rel=1e-5) and job[2] == pytest.approx(ref_losses, rel=2e-3)
    assert all(torch.equal(rank0[3][k], g) for k, g in spawned[0][1].items())  # first step's averaged gradients
    assert all(torch.equal(v, rank1[4][k]) for k, v in rank0[4].items())  # the replicas stay identical
    assert record.read(task.out_dir)["attempts"][0]["job_id"] == job_id


def test_bad_cluster_options_name_the_file_and_key(tmp_path):
    path = tmp_path / "cluster.yaml"
    path.write_text("slurm: {nodes: 0}\n")
    with pytest.raises(ValueError, match=rf"{path}: slurm.nodes = 0 must be an integer >= 1"):
        launch.load_options(path)
    path.write_text("slurm: {gpu_per_node: 8}\n")
    with pytest.raises(ValueError, match=r"unknown slurm option\(s\) gpu_per_node; allowed: .*gpus_per_node"):
        launch.load_options(path)
    with pytest.raises(ValueError, match="--launcher = 'slurmm'; allowed: local, slurm"):
        launch.choose("slurmm")
    paper = launch.load_options(REPO / "cluster.yaml")
    assert paper.tasks == 1 and paper.time_min > 0  # the shipped file loads


def test_the_paper_layout_in_cluster_yaml_is_64_gpus(tmp_path):
    import yaml

    text = (REPO / "cluster.yaml").read_text()
    example = "\n".join(
        line.removeprefix("# ") for line in text.split("copy it over")[1].splitlines()[1:] if line.startswith("# ")
    )
    (tmp_path / "paper.yaml").write_text(example)
    opts = launch.load_options(tmp_path / "paper.yaml")
    assert opts.tasks == 64 and opts.gpus_per_node == 8 and yaml.safe_load(example)["slurm"]["nodes"] == 8


def test_a_stage_rerun_after_the_login_node_died_reattaches_to_its_job(tmp_path, cluster, reference):
    """`python -m studylib.repro --launcher slurm` killed with everything it started (the login node dies); the
    job runs on. The same command again re-attaches to that job, and DVC records the stage."""
    ref_run, data = reference
    root = tmp_path / "project"
    root.mkdir()
    train = " ".join(train_cmd(Path("run"), data)).replace(SMALL_DATA, f"'{SMALL_DATA}'")
    (root / "dvc.yaml").write_text(
        f"stages:\n  train:\n    cmd: {json.dumps(train)}\n    outs:\n      - run: {{persist: true}}\n"
    )
    for cmd in (
        ["git", "init", "-q"],
        ["dvc", "init", "-q"],
        ["git", "add", "-A"],
        ["git", "-c", "user.name=ci", "-c", "user.email=ci@example.com", "commit", "-qm", "study"],
    ):
        subprocess.run(cmd, cwd=root, check=True)  # dvclive needs a commit
    repro = [sys.executable, "-m", "studylib.repro", "--jobs", "1", "--launcher", "slurm", "--cluster", str(cluster)]
    first = subprocess.Popen(
        repro, cwd=root, env=ENV, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    run = root / "run"
    wait_for(lambda: (run / "checkpoints" / "last.pth").is_file(), "the job's first checkpoint")
    job_id = record.read(run)["job_id"]
    subprocess.run(["scontrol", "suspend", job_id], check=True)  # hold it while nobody waits for it
    os.killpg(first.pid, 9)
    first.wait()
    wait_for(lambda: not group_alive(first.pid), "the killed commands to be gone")  # DVC's lock names their PIDs
    log = tmp_path / "again.log"
    with open(log, "w") as f:
        again = subprocess.Popen(repro, cwd=root, env=ENV, stdout=f, stderr=subprocess.STDOUT, text=True)
        wait_for(lambda: "re-attaching" in log.read_text() or again.poll() is not None, "the second command")
        subprocess.run(["scontrol", "resume", job_id], check=True)
        assert again.wait(timeout=600) == 0, log.read_text()
    assert f"re-attaching to job {job_id}" in log.read_text()
    rec = record.read(run)
    assert rec["job_id"] == job_id and rec["state"] == "COMPLETED" and len(rec["attempts"]) == 1
    assert results(run) == results(ref_run)
    status = subprocess.run(["dvc", "status"], cwd=root, capture_output=True, text=True)
    assert "up to date" in status.stdout, status.stdout


def test_a_changed_stage_starts_its_persistent_run_folder_clean(tmp_path, monkeypatch):
    """A run folder DVC keeps (persist) is resumed only by the very same stage: another fingerprint empties it."""
    from studylib.launch import stage

    cfg = config.load(PARAMS, "smoke")
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / "last.pth").write_text("stale")
    monkeypatch.setattr(stage, "current", lambda: stage.Stage("train", "fp-1", (out.resolve(),)))
    key, persistent = stage.request(out, stage.config_key(cfg))
    assert persistent and key == stage.request(out, stage.config_key(cfg))[0]
    monkeypatch.setattr(stage, "current", lambda: stage.Stage("train", "fp-2", (out.resolve(),)))
    assert stage.request(out, stage.config_key(cfg))[0] != key
    monkeypatch.setattr(stage, "current", lambda: None)
    assert stage.request(out, stage.config_key(cfg)) == (stage.config_key(cfg), False)
    stage.empty(out)
    assert out.is_dir() and not any(out.iterdir())


def test_a_new_run_cancels_the_job_an_earlier_run_left_in_its_folder(tmp_path, cluster, reference):
    """DVC removes an unfinished stage's outputs before running it again: the earlier job, still running,
    is cancelled rather than left writing into the new run."""
    import shutil

    _, data = reference
    out = tmp_path / "run"
    proc, job_id = start_job(out, data, cluster)
    wait_for(lambda: (out / "checkpoints" / "last.pth").is_file(), "the job's first checkpoint")
    subprocess.run(["scontrol", "suspend", job_id], check=True)  # it would run on while nobody waits
    proc.kill()  # the waiting command dies ...
    proc.wait()
    shutil.rmtree(out)  # ... and its folder goes, as `dvc repro` removes a stage's outputs
    r = subprocess.run(
        train_cmd(out, data, "--launcher", "slurm", "--cluster", str(cluster), iters=2, every=2),
        env=ENV,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr
    assert f"cancelled job {job_id}" in r.stderr
    assert slurm.job_state(job_id) in (None, "CANCELLED", "COMPLETING")
    rec = record.read(out)
    assert rec["job_id"] != job_id and rec["state"] == "COMPLETED"
