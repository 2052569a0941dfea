"""How train is launched and stopped: srun jobs, a second writer, signals, --stop-after."""

from __future__ import annotations

import json
import random
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
import torch

from tests.test_train_run import (
    ENV,
    STEPS,
    _argv,
    _assert_same,
    _max_diff,
    _run,
    _weights,
    reference,  # noqa: F401 - fixture
    shards,  # noqa: F401 - fixture
)

# Variables a launcher sets: a test process must not inherit them from whoever runs pytest.
LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def _plain_env() -> dict[str, str]:
    return {k: v for k, v in ENV.items() if k not in LAUNCH_VARS and not k.startswith("SLURM_")}


def slurm_envs(tasks: int) -> list[dict[str, str]]:
    """What ``srun --ntasks=N`` on one node gives each task, with a job id whose derived port
    (20000 + id) is free here."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    while not 20000 <= port < 40000:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
    common = {
        **_plain_env(),
        "SLURM_NTASKS": str(tasks),
        "SLURM_JOB_NODELIST": "localhost",
        "SLURM_JOB_ID": str(port - 20000),
    }
    return [{**common, "SLURM_PROCID": str(r), "SLURM_LOCALID": str(r)} for r in range(tasks)]


def run_as_slurm_tasks(argv: list[str], tasks: int) -> list[subprocess.CompletedProcess[str]]:
    procs = [
        subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for env in slurm_envs(tasks)
    ]
    done = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        done.append(subprocess.CompletedProcess(argv, p.returncode, out, err))
    for d in done:
        assert d.returncode == 0, d.stderr[-3000:]
    return done


def test_srun_tasks_join_one_ddp_job(shards: Path, tmp_path: Path) -> None:  # noqa: F811
    single, job = tmp_path / "single", tmp_path / "job"
    _run(_argv(shards, single, "--stop-after", "2", batch=4))
    tasks = run_as_slurm_tasks(_argv(shards, job, "--stop-after", "2", batch=2), 2)
    a, b = (torch.load(d / "last.pt", weights_only=True) for d in (single, job))
    assert b["step"] == 2
    # One job on the global batch of 4 (see test_two_gloo_processes_equal_one_with_the_global
    # _batch for the tolerance); two independent runs of batch 2 would differ by ~1e-2.
    assert _max_diff(a["model"], b["model"]) < 1e-3
    assert len((job / "log.jsonl").read_text().splitlines()) == 2  # rank 0 alone logs
    assert sum("stopped after step" in t.stdout for t in tasks) == 1  # one report


def test_second_train_into_one_directory_is_refused(shards: Path, tmp_path: Path) -> None:  # noqa: F811
    out = tmp_path / "run"
    first = subprocess.Popen(
        _argv(shards, out, "--max-steps", "400"),
        env=_plain_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while not (out / "log.jsonl").is_file() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert first.poll() is None
        second = subprocess.run(
            _argv(shards, out), env=_plain_env(), capture_output=True, text=True, timeout=300
        )
        assert second.returncode == 2
        lines = second.stderr.strip().splitlines()
        assert lines[-1] == f"Error: {out}: another distinit train is already writing here " \
            "(one run per directory)"  # fmt: skip
        # Refused before it announces a run of its own.
        assert not [line for line in lines if line.startswith(("training ", "frames: "))], lines
        assert "Traceback" not in second.stderr
    finally:
        first.kill()
        first.wait()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_saves_the_current_step_and_resumes_bit_identical(
    signum: int,
    shards: Path,  # noqa: F811
    reference: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    out = tmp_path / "run"
    rng = random.Random(signum)
    # --save-every above the run length: whatever last.pt holds was saved by the signal.
    argv = _argv(shards, out, "--save-every", "1000")
    proc = subprocess.Popen(
        argv, env=_plain_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    log = out / "log.jsonl"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if log.is_file() and log.read_text().strip():
            break  # training has started
        time.sleep(0.01)
    time.sleep(rng.uniform(0.0, 0.5))
    assert proc.poll() is None, "the run ended before the signal"
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signum, err[-2000:]
    stopped_at = torch.load(out / "last.pt", weights_only=True)["step"]
    assert 1 <= stopped_at < STEPS
    name = signal.Signals(signum).name
    expected = f"{name} at step {stopped_at} of {STEPS}: saved {out / 'last.pt'}; run the same "
    assert err.strip().splitlines()[-1] == expected + "command again to resume"
    assert not (out / "final.pt").exists()
    resumed = _run(argv)
    assert f"steps {stopped_at} -> {STEPS}" in resumed.stdout
    _assert_same(_weights(out), _weights(reference))
    steps = [json.loads(x)["step"] for x in log.read_text().splitlines()]
    assert steps == list(range(1, STEPS + 1))


def test_repeating_one_stop_after_command_reaches_final(
    shards: Path,  # noqa: F811
    reference: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    out = tmp_path / "run"
    argv = _argv(shards, out, "--stop-after", "5")
    progress = []
    for _ in range(3):
        result = _run(argv)
        progress.append(torch.load(out / "last.pt", weights_only=True)["step"])
        if (out / "final.pt").exists():
            break
        assert "run again to continue" in result.stdout
    assert progress == [5, STEPS]
    _assert_same(_weights(out), _weights(reference))
