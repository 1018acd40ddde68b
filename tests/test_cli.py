"""The ``archdisc`` command: spaces, discover, error handling and exit codes."""
import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from archdisc.cli import _option_value, main
from helpers import assert_same_accuracy

SPACES = ["mlp", "skip_mlp", "convnet", "densenet", "resnet18"]
TEACHER = ["--data", "teacher", "--space", "mlp", "--space-option", "widths=[20, 16, 16, 4]",
           "--data-option", "n_train=500", "--data-option", "n_val=100",
           "--data-option", "n_test=100", "--epochs", "2", "--lr", "0.01", "--quiet",
           "--device", "cpu", "--finetune", "0", "--select", "none"]


def test_spaces_lists_the_builtins(capsys):
    assert main(["spaces"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines][:len(SPACES)] == SPACES  # then user spaces
    assert all(len(line.split(None, 1)[1]) > 10 for line in lines)


def test_console_script_spaces():
    exe = Path(sys.executable).with_name("archdisc")
    out = subprocess.run([str(exe), "spaces"], capture_output=True, text=True, check=True)
    assert [line.split()[0] for line in out.stdout.splitlines()] == SPACES


def test_discover_end_to_end_and_resume(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["discover", *TEACHER, "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert f"outputs in {out}" in text
    assert "compact model: test accuracy" in text and "parameters kept:" in text
    cfg = tomllib.loads((out / "config.toml").read_text())
    assert cfg["epochs"] == 2 and cfg["space_options"] == {"widths": [20, 16, 16, 4]}
    assert cfg["data_options"] == {"n_train": 500, "n_val": 100, "n_test": 100}
    report = json.loads((out / "report.json").read_text())
    assert_same_accuracy(report["test"]["compact"], report["test"]["supernet"],
                         report["data"]["sizes"][2])

    # same run again: refused, exit 2, a one-line message without traceback
    assert main(["discover", *TEACHER, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--resume" in err and "Traceback" not in err
    # --resume alone reads the run's config.toml
    assert main(["discover", "--out", str(out), "--resume", "--quiet"]) == 0
    assert "parameters kept" in capsys.readouterr().out
    # another config: refused without --force, accepted with it
    assert main(["discover", *TEACHER, "--lam", "0.3", "--out", str(out)]) == 2
    assert "differs in: lam" in capsys.readouterr().err
    assert main(["discover", *TEACHER, "--lam", "0.3", "--out", str(out), "--force"]) == 0
    assert tomllib.loads((out / "config.toml").read_text())["lam"] == 0.3


def test_report_measures_latency_and_export_adds_the_runtimes(tmp_path, capsys):
    """report.json holds the eager latency of the start and the compact model at batch 1
    and 64 (positive medians); export adds the ONNX file's, and report.md shows both."""
    out = tmp_path / "run"
    assert main(["discover", *TEACHER, "--out", str(out)]) == 0
    lat = json.loads((out / "report.json").read_text())["latency"]
    assert lat["batches"] == [1, 64] and set(lat["eager"]) == {"start", "compact"}
    assert all(0 < ms < 1000 for row in lat["eager"].values() for ms in row)
    assert main(["export", str(out), "--format", "onnx"]) == 0
    assert "onnx         " in capsys.readouterr().out
    lat = json.loads((out / "report.json").read_text())["latency"]
    assert set(lat["export"]) == {"onnx"} and all(ms > 0 for ms in lat["export"]["onnx"])
    md = (out / "report.md").read_text()
    assert "| eager ms, batch 64 |" in md and "| onnxruntime ms, batch 1 |  |" in md


def test_config_file_and_overrides(tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text('data = "teacher"\nepochs = 1\nlr = 0.01\ndevice = "cpu"\n'
                   '[space_options]\nwidths = [20, 8, 4]\n'
                   '[data_options]\nn_train = 200\nn_val = 50\nn_test = 50\n')
    out = tmp_path / "run"
    assert main(["discover", "--config", str(cfg), "--out", str(out), "--quiet",
                 "--seed", "3", "--space-option", "act=tanh"]) == 0
    resolved = tomllib.loads((out / "config.toml").read_text())
    assert resolved["seed"] == 3 and resolved["epochs"] == 1
    assert resolved["space_options"] == {"widths": [20, 8, 4], "act": "tanh"}


@pytest.mark.parametrize("args, message", [
    (["--optimizer", "rmsprop"], "'optimizer': 'rmsprop' is not allowed; choose one of"),
    (["--space", "transformer"], "unknown search space 'transformer'"),
    (["--data", "imagenet"], "unknown dataset 'imagenet'"),
    (["--density", "0"], "'density': must be a number in (0, 1]"),
    (["--data", "teacher"], "space_options"),
    (["--space-option", "depth=3", "--data", "teacher"], "bad option"),
])
def test_config_errors_exit_2_with_a_clean_message(tmp_path, capsys, args, message):
    assert main(["discover", "--out", str(tmp_path / "run"), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert err.startswith("archdisc discover: error:")


def test_unknown_key_in_config_file(tmp_path, capsys):
    (tmp_path / "c.toml").write_text("epoch = 3\n")
    assert main(["discover", "--config", str(tmp_path / "c.toml"), "--out",
                 str(tmp_path / "run")]) == 2
    assert "unknown config key 'epoch' (did you mean 'epochs'?)" in capsys.readouterr().err


def test_divergence_exits_1(tmp_path, capsys):
    args = ["--optimizer", "sgd", "--lr", "1e9", "--density", "1"]
    assert main(["discover", *TEACHER, *args, "--out", str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err
    assert "diverged" in err and "smaller lr" in err and "Traceback" not in err


def test_bad_flag_value_is_an_argparse_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["discover", "--out", str(tmp_path), "--epochs", "x"])
    assert e.value.code == 2
    assert "--epochs: invalid int value" in capsys.readouterr().err


def test_option_values_are_toml():
    assert _option_value("widths=[1, 2]") == ("widths", [1, 2])
    assert _option_value("act=relu") == ("act", "relu")
    assert _option_value("width_mult=0.25") == ("width_mult", 0.25)
    assert _option_value("bias=true") == ("bias", True)


def test_every_option_of_every_command_has_help():
    import argparse
    from archdisc.cli import build_parser
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    bare = []
    for name, p in sub.choices.items():
        for action in p._actions:
            text = (action.help or "").strip()
            if action.dest != "help" and (not text or text.startswith("(default")):
                bare.append(f"{name} {'/'.join(action.option_strings) or action.dest}")
    assert not bare, bare
    import os
    text = subprocess.run([sys.executable, "-m", "archdisc.cli", "discover", "--help"],
                          capture_output=True, text=True, check=True,
                          env={**os.environ, "COLUMNS": "400"}).stdout
    assert "one of: adabreg, linbreg, proxsgd, sgd, adam" in text
    assert "teacher" in text.split("\n  --data DATA", 1)[1].split("\n  --data-root", 1)[0]
    main_part, expert = text.split("\nexpert options:\n", 1)
    for flag in ("--space", "--data", "--epochs", "--lr", "--lam", "--density",
                 "--target-params", "--select", "--seed", "--threads", "--device"):
        assert f"\n  {flag} " in main_part and f"\n  {flag} " not in expert, flag
    for flag in ("--lam-layers", "--group-mode", "--delta", "--momentum", "--fused",
                 "--select-steps", "--select-frac", "--select-tol", "--select-lr"):
        assert f"\n  {flag} " in expert and f"\n  {flag} " not in main_part, flag
    assert "--select-sweep" not in text and "--select-fresh" not in text


def test_version_and_dict_fields_as_repeated_options(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.startswith("archdisc 0.")
    out = tmp_path / "run"
    assert main(["discover", *TEACHER, "--out", str(out), "--lam-layers", "fc2=0.5",
                 "--lam-layers", "fc1=2"]) == 0
    assert tomllib.loads((out / "config.toml").read_text())["lam_layers"] == \
        {"fc2": 0.5, "fc1": 2}


def test_a_log_file_gets_a_line_per_epoch_and_per_phase(tmp_path):
    args = [a for a in TEACHER if a != "--quiet"]
    log = tmp_path / "log.txt"
    with open(log, "w") as f:
        subprocess.run([sys.executable, "-m", "archdisc.cli", "discover", *args,
                        "--finetune", "1", "--out", str(tmp_path / "r")], stderr=f,
                       stdout=subprocess.DEVNULL, check=True)
    lines = log.read_text().splitlines()
    assert [line.split()[:2] for line in lines if line.startswith("epoch")] == \
        [["epoch", "1/2"], ["epoch", "2/2"]]
    assert any(line.startswith("extracted (exact, verified)") for line in lines)
    assert any(line.startswith("fine-tuned 1 epochs") for line in lines)
    quiet = subprocess.run([sys.executable, "-m", "archdisc.cli", "discover", *TEACHER,
                            "--out", str(tmp_path / "q")], capture_output=True, text=True,
                           check=True)
    assert quiet.stderr == ""


def test_boolean_flags_read_true_and_false(tmp_path, capsys):
    from archdisc.cli import build_parser
    from archdisc.recipe.setup import make_optimizer
    from archdisc import ArchNet, Config, build_space
    p = build_parser()
    for text, value in (("true", True), ("false", False), ("0", False), ("yes", True)):
        args = p.parse_args(["discover", "--out", "x", "--fused", text])
        assert args.fused is value
    with pytest.raises(SystemExit) as e:
        p.parse_args(["discover", "--out", "x", "--fused", "maybe"])
    assert e.value.code == 2 and "expected true or false" in capsys.readouterr().err
    net = ArchNet(build_space("mlp", widths=[4, 3, 2], in_shape=None))
    for fused in (None, True, False):
        assert make_optimizer(net, Config(fused=fused)).fused is fused
