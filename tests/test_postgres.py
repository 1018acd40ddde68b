"""`archdisc tune` on a real PostgreSQL server: two "machines" (two processes with their
own run folders) share one study by name.

The server is a private cluster in a temp folder (Debian's postgresql package, 127.0.0.1
only). Without the server programs the test is skipped, unless ARCHDISC_REQUIRE_POSTGRES=1
(CI sets it: there a missing server is a failure, not a skip).
"""
import csv
import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import optuna
import pytest


def _server_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    return Path(found[-1]).parent if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres_url():
    bin_dir = _server_bin()
    if bin_dir is None or shutil.which("runuser") is None and os.geteuid() == 0:
        if os.environ.get("ARCHDISC_REQUIRE_POSTGRES") == "1":
            pytest.fail("PostgreSQL server programs not found (apt-get install postgresql)")
        pytest.skip("no PostgreSQL server programs (Debian package postgresql)")
    pytest.importorskip("psycopg", reason="pip install -e '.[postgres]'")
    root = Path(tempfile.mkdtemp(prefix="archdisc-pg-"))
    as_user = []
    if os.geteuid() == 0:  # the server refuses to run as root
        shutil.chown(root, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    data, port = root / "data", _free_port()
    run = lambda *cmd: subprocess.run([*as_user, *map(str, cmd)], check=True,  # noqa: E731
                                      capture_output=True, text=True)
    run(bin_dir / "initdb", "-D", data, "-U", "postgres", "--auth=trust")
    run(bin_dir / "pg_ctl", "-D", data, "-l", root / "log", "-w", "start",
        "-o", f"-h 127.0.0.1 -p {port} -k {root}")
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        run(bin_dir / "pg_ctl", "-D", data, "-m", "immediate", "stop")
        shutil.rmtree(root, ignore_errors=True)


def test_two_machines_share_one_study(tmp_path, postgres_url):
    exe = Path(sys.executable).with_name("archdisc")
    common = ["tune", "--storage", postgres_url, "--study", "shared", "--trials", "3",
              "--no-abort", "--space", "mlp", "--space-option", "widths=[20, 32, 32, 4]",
              "--data", "teacher", "--data-option", "n_train=600", "--data-option",
              "n_val=200", "--data-option", "n_test=200", "--epochs", "2",
              "--select", "none", "--threads", "1", "--device", "cpu"]
    machines = [subprocess.Popen([str(exe), *common, "--out", str(tmp_path / name)],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                for name in ("a", "b")]
    for m in machines:
        out, err = m.communicate(timeout=600)
        assert m.returncode == 0, err
        assert f"in {postgres_url}" in err  # the storage is printed
    study = optuna.load_study(study_name="shared", storage=postgres_url)
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(study.trials) == len(done) == 6
    draws = {tuple(sorted(t.params.items())) for t in done}
    assert len(draws) == 6  # no machine repeated another's parameters
    assert study.metric_names == ["val_metric", "params"]
    folders = {Path(t.user_attrs["run_dir"]).parent.parent.name for t in done}
    assert folders == {"a", "b"}
    # the machine that finished last wrote the whole study's front
    last = max((tmp_path / n / "pareto.csv" for n in "ab"), key=lambda p: p.stat().st_mtime)
    with open(last) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6 and any(r["pareto"] == "True" for r in rows)


def test_missing_driver_or_server_is_one_clear_line(tmp_path, capsys, monkeypatch):
    from archdisc.cli import main
    pytest.importorskip("psycopg", reason="pip install -e '.[postgres]'")
    port = _free_port()  # nothing listens there
    args = ["tune", "--out", str(tmp_path / "s"), "--trials", "1", "--data", "teacher",
            "--space", "mlp", "--space-option", "widths=[20, 8, 4]",
            "--storage", f"postgresql://postgres@127.0.0.1:{port}/postgres"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "cannot open the study storage" in err and "Traceback" not in err
    monkeypatch.setitem(sys.modules, "psycopg", None)  # as if the extra were not installed
    assert main(args) == 2
    assert "pip install -e '.[postgres]'" in capsys.readouterr().err
