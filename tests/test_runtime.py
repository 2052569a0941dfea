"""Which process this is (torchrun, Slurm), atomic writes, directory locks."""

from __future__ import annotations

import json
import multiprocessing
import os
from pathlib import Path

import pytest
import torch

from distinit.pipeline.atomic import atomic_torch_save, atomic_write
from distinit.pipeline.directory_lock import DirectoryLock
from distinit.pipeline.errors import ConfigError
from distinit.pipeline.runtime import (
    Process,
    local_rank,
    process_from_environment,
    rendezvous_environment,
)
from distinit.pipeline.slurm import first_slurm_host, slurm_hostnames


def test_torchrun_then_slurm_then_one_process() -> None:
    torchrun = {"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1"}
    slurm = {"SLURM_PROCID": "5", "SLURM_NTASKS": "6", "SLURM_LOCALID": "2"}
    assert process_from_environment(torchrun) == Process(3, 8, 1, "torchrun")
    assert process_from_environment(slurm) == Process(5, 6, 2, "slurm")
    assert process_from_environment({**slurm, **torchrun}).launcher == "torchrun"
    assert process_from_environment({}) == Process(0, 1, 0, "none")
    with pytest.raises(ConfigError, match="SLURM_PROCID"):
        process_from_environment({"SLURM_PROCID": "6", "SLURM_NTASKS": "6"})
    with pytest.raises(ConfigError, match="RANK"):
        process_from_environment({"RANK": "x", "WORLD_SIZE": "2"})
    assert local_rank({"LOCAL_RANK": "3", "SLURM_LOCALID": "1"}) == 3
    assert local_rank({"SLURM_LOCALID": "1"}) == 1
    assert local_rank({}) == 0


def test_slurm_rendezvous_is_derived_the_same_on_every_task() -> None:
    assert first_slurm_host("gpu[03-05,07],cpu1") == "gpu03"
    assert first_slurm_host("node7,node8") == "node7"
    env = {"SLURM_JOB_NODELIST": "gpu[12-13]", "SLURM_JOB_ID": "4242"}
    proc = Process(1, 2, 1, "slurm")
    assert rendezvous_environment(proc, env) == {"MASTER_ADDR": "gpu12", "MASTER_PORT": "24242"}
    # What the user set wins; torchrun sets its own and gets nothing added.
    assert rendezvous_environment(proc, {**env, "MASTER_ADDR": "h", "MASTER_PORT": "1"}) == {}
    assert rendezvous_environment(Process(1, 2, 1, "torchrun"), env) == {}


@pytest.mark.parametrize(
    ("nodelist", "hosts"),
    [
        ("node7", ["node7"]),
        ("node7,node8", ["node7", "node8"]),
        ("gpu[03-05,07],cpu1", ["gpu03", "gpu04", "gpu05", "gpu07", "cpu1"]),
        ("gpu[001-003]-ib", ["gpu001-ib", "gpu002-ib", "gpu003-ib"]),  # a suffix
        ("rack[1-2]-gpu[01-02]", ["rack1-gpu01", "rack1-gpu02", "rack2-gpu01", "rack2-gpu02"]),
        ("n[8-10]", ["n8", "n9", "n10"]),  # no padding without a leading zero
        ("n[098-101]", ["n098", "n099", "n100", "n101"]),  # padded to the low bound's width
        ("a[1,3],b-[2]-x,c", ["a1", "a3", "b-2-x", "c"]),
    ],
)
def test_slurm_node_lists_expand_as_slurm_does(nodelist: str, hosts: list[str]) -> None:
    assert slurm_hostnames(nodelist) == hosts


@pytest.mark.parametrize("nodelist", ["gpu[1-", "gpu[a]", "x[3-1]", "a]b", ",", ""])
def test_a_malformed_slurm_node_list_is_one_line(nodelist: str) -> None:
    with pytest.raises(ConfigError, match="cannot read the Slurm node list"):
        slurm_hostnames(nodelist)


def test_first_slurm_host_asks_scontrol_when_slurm_is_installed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no scontrol: the parser
    assert first_slurm_host("rack[1-2]-gpu[01-04]") == "rack1-gpu01"
    assert first_slurm_host("gpu[001-004]-ib") == "gpu001-ib"
    scontrol = tmp_path / "scontrol"
    scontrol.write_text(f'#!/bin/sh\necho "$1 $2" > {tmp_path}/asked; echo h-from-slurm\n')
    scontrol.chmod(0o755)
    assert first_slurm_host("gpu[001-004]-ib") == "h-from-slurm"
    assert (tmp_path / "asked").read_text() == "show hostnames\n"
    scontrol.write_text("#!/bin/sh\nexit 1\n")  # a broken Slurm client: the parser again
    assert first_slurm_host("gpu[001-004]-ib") == "gpu001-ib"


def test_atomic_writes_leave_only_the_file(tmp_path: Path) -> None:
    atomic_write(tmp_path / "a.bin", b"\x00\x01")
    atomic_write(tmp_path / "b.txt", "héllo")
    atomic_write(tmp_path / "c.json", {"x": [1, 2]})
    atomic_torch_save(tmp_path / "d.pt", {"w": torch.arange(3)})
    assert (tmp_path / "a.bin").read_bytes() == b"\x00\x01"
    assert (tmp_path / "b.txt").read_text(encoding="utf-8") == "héllo"
    assert json.loads((tmp_path / "c.json").read_text()) == {"x": [1, 2]}
    assert torch.equal(torch.load(tmp_path / "d.pt", weights_only=True)["w"], torch.arange(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin", "b.txt", "c.json", "d.pt"]


def _write_many(path: str, tag: int) -> None:
    for i in range(200):
        atomic_write(Path(path), {"writer": tag, "i": i, "pad": "x" * 5000})


def test_concurrent_writers_of_one_file_never_leave_it_torn(tmp_path: Path) -> None:
    path = tmp_path / "manifest.json"
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_write_many, args=(str(path), t)) for t in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    assert all(p.exitcode == 0 for p in procs)
    assert json.loads(path.read_text())["i"] == 199
    assert os.listdir(tmp_path) == ["manifest.json"]


def test_directory_lock_refuses_a_second_holder_in_one_line(tmp_path: Path) -> None:
    with DirectoryLock(tmp_path, "another distinit train is already writing here"):
        with pytest.raises(ConfigError) as info:
            DirectoryLock(tmp_path, "another distinit train is already writing here").acquire()
        assert str(info.value) == f"{tmp_path}: another distinit train is already writing here"
    with DirectoryLock(tmp_path, "free again"):
        pass
