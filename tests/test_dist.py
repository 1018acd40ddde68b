"""Data-parallel discovery under torchrun: 2 CPU processes (gloo) on small teacher data.
2,932 samples in batches of 101: uneven slices (51 / 50) and a last batch of 3 that
both processes run whole.

One uninterrupted 2-process run is compared with a single-process run of the same config
(same global batch and data order: equal to float tolerance) and with a 2-process run whose
rank 1 is killed with SIGKILL and which is then resumed (bit-identical)."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from archdisc import Config, run_discover
from archdisc.io import load_tensors

TORCHRUN = Path(sys.executable).with_name("torchrun")
ARGS = ["--data", "teacher", "--space", "mlp", "--space-option", "widths=[20,48,48,4]",
        "--limit", "2932", "--epochs", "12", "--batch-size", "101", "--finetune", "0",
        "--select", "none", "--target-params", "900", "--threads", "1"]
pytestmark = pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun is not installed")


def torchrun(out, *extra, wait=True):
    cmd = [str(TORCHRUN), "--standalone", "--nproc_per_node", "2", "-m", "archdisc",
           "discover", *ARGS, "--out", str(out), *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=env)
    if not wait:
        return p
    stdout, stderr = p.communicate(timeout=240)
    assert p.returncode == 0, stderr[-3000:]
    return stdout, stderr


def records(out):
    return [{k: v for k, v in json.loads(line).items() if k != "seconds"}
            for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist") / "full"
    torchrun(out)
    return out


def test_two_processes_equal_one(full, tmp_path):
    rep = json.loads((full / "report.json").read_text())
    assert rep["world_size"] == 2
    assert len(records(full)) == 12  # rank 0 alone wrote the metrics
    cfg = Config(data="teacher", space="mlp", space_options={"widths": [20, 48, 48, 4]},
                 limit=2932, epochs=12, batch_size=101, finetune=0, select="none",
                 target_params=900)
    one = run_discover(cfg, tmp_path / "one", progress=False)
    assert one["world_size"] == 1
    a, _ = load_tensors(full / "supernet.safetensors")
    b, _ = load_tensors(tmp_path / "one" / "supernet.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=k)
    for r2, r1 in zip(records(full), records(tmp_path / "one")):
        assert r2["alive"] == r1["alive"] and r2["params"] == r1["params"]
        assert r2["lam"] == pytest.approx(r1["lam"], rel=1e-4)
        assert r2["train_loss"] == pytest.approx(r1["train_loss"], rel=1e-5)
    assert rep["units"] == one["units"]


def _rank_pid(parent: int, rank: int) -> int | None:
    """The pid of torchrun's worker with RANK=rank (from /proc/PID/environ)."""
    for child in Path(f"/proc/{parent}/task/{parent}/children").read_text().split():
        try:
            env = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in env:
            return int(child)
    return None


def test_kill_of_one_rank_stops_the_job_and_resume_is_bit_identical(full, tmp_path):
    out = tmp_path / "cut"
    p = torchrun(out, wait=False)
    try:
        deadline = time.monotonic() + 120
        while not ((out / "metrics.jsonl").exists()
                   and (out / "metrics.jsonl").read_text().count("\n") >= 2):
            assert p.poll() is None and time.monotonic() < deadline, "no epoch finished"
            time.sleep(0.02)
        os.kill(_rank_pid(p.pid, 1), signal.SIGKILL)
        _, stderr = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode != 0
    assert ("lost contact with another process" in stderr
            or "stopped by torchrun" in stderr), stderr[-3000:]
    assert "--resume" in stderr
    assert not (out / "report.json").exists()
    _, meta = load_tensors(out / "checkpoint.safetensors")
    assert 2 <= meta["epoch"] < 12
    torchrun(out, "--resume")
    for name in ("supernet.safetensors", "compact.safetensors", "checkpoint.safetensors"):
        a, _ = load_tensors(full / name)
        b, _ = load_tensors(out / name)
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), name
    assert records(out) == records(full)


def test_tune_refuses_torchrun(tmp_path, monkeypatch):
    from archdisc.errors import ConfigError
    from archdisc.tune import TuneSettings, tune
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="torchrun"):
        tune(Config(data="teacher"), tmp_path / "study", TuneSettings(trials=1))
    assert not (tmp_path / "study").exists()


def test_channels_last_grads_reach_ddp_in_the_parameters_layout(tmp_path):
    """A one-channel image batch from numpy is channels-last to torch; conv then returns
    channels-last weight grads and DDP warned "Grad strides do not match" (the grad's
    layout is not its bucket's, which is the parameter's) on every rank. Dist.wrap hands
    DDP each grad in its parameter's layout, with the same values."""
    import copy

    from archdisc.dist import Dist
    torch.distributed.init_process_group(
        "gloo", store=torch.distributed.FileStore(str(tmp_path / "store"), 1),
        rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 5), torch.nn.Conv2d(8, 4, 5))
        plain = copy.deepcopy(net)
        x = torch.randn(4, 28, 28, 1).permute(0, 3, 1, 2)  # strides (784, 1, 28, 1)
        Dist(rank=0, world=2).wrap(net)(x).sum().backward()
        plain(x).sum().backward()
        assert any(q.grad.stride() != q.stride() for q in plain.parameters())  # the cause
        for p, q in zip(net.parameters(), plain.parameters()):
            assert p.grad.stride() == p.stride()
            torch.testing.assert_close(p.grad, q.grad, rtol=0, atol=0)
    finally:
        torch.distributed.destroy_process_group()
