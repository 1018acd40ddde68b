"""The bad-input corpus: every case is one row, run through the ``archdisc`` command.

Each row gives the arguments (``{tmp}`` is the test's folder, ``{run}`` a finished small
run), a function that damages files first (or None), and the message the one-line error
must contain. Every case must exit non-zero, print no traceback and leave no half-written
file behind. RESULTS.md section 10 counts the outcomes.
"""
import gzip
import json
import shutil

import numpy as np
import pytest

from archdisc.cli import main

from test_data import write_fake_cifar, write_fake_idx_dataset

TEACHER = ["--data", "teacher", "--space", "mlp", "--space-option", "widths=[20, 8, 4]",
           "--data-option", "n_train=200", "--data-option", "n_val=50",
           "--data-option", "n_test=50", "--epochs", "1", "--quiet", "--finetune", "0",
           "--select", "none"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    run = tmp_path_factory.mktemp("finished") / "run"
    assert main(["discover", *TEACHER, "--out", str(run)]) == 0
    return run


# ----------------------------------------------------------------- damage functions
def binary_file(tmp, run):
    (tmp / "bin.toml").write_bytes(bytes(range(256)))


def a_folder(tmp, run):
    (tmp / "folder.toml").mkdir()


def empty_folder(tmp, run):
    (tmp / "empty").mkdir()


def idx(label=None, truncate=False):
    def damage(tmp, run):
        write_fake_idx_dataset(tmp / "fm")
        path = tmp / "fm" / "train-labels-idx1-ubyte.gz"
        raw = gzip.decompress(path.read_bytes())
        if label is not None:
            raw = raw[:8] + bytes([label]) + raw[9:]
        blob = gzip.compress(raw)
        path.write_bytes(blob[: len(blob) // 2] if truncate else blob)
    return damage


def cifar_label_255(tmp, run):
    write_fake_cifar(tmp / "c10")
    path = tmp / "c10" / "cifar-10-batches-bin" / "data_batch_3.bin"
    raw = bytearray(path.read_bytes())
    raw[0] = 255
    path.write_bytes(bytes(raw))


def npz(**arrays):
    def damage(tmp, run):
        np.savez(tmp / "d.npz", **arrays)
    return damage


def text_csv(tmp, run):
    (tmp / "d.csv").write_text("a,b,label\n1,x,0\n2,y,1\n3,z,0\n4,w,1\n")


def csv(text):
    def damage(tmp, run):
        (tmp / "d.csv").write_text(text)
    return damage


def binary_csv(tmp, run):
    (tmp / "d.csv").write_bytes(bytes(range(128, 256)))


def text_npz(tmp, run):
    (tmp / "d.npz").write_text("x,y\n1,0\n")


def image_folder(classes=("cat", "dog"), damage_file=None):
    """{tmp}/img/<class>/<i>.png, 4 RGB 8x8 images a class; ``damage_file(path)`` then
    spoils img/dog/2.png."""
    def damage(tmp, run):
        from PIL import Image
        rng = np.random.default_rng(0)
        for c in classes:
            (tmp / "img" / c).mkdir(parents=True)
            for i in range(4):
                Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(
                    tmp / "img" / c / f"{i}.png")
        if damage_file is not None:
            damage_file(tmp / "img" / "dog" / "2.png")
    return damage


def cut_in_half(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def zero_bytes(path):
    path.write_bytes(b"")


def model_file(edit):
    """Copy the finished run into {tmp}/m and damage its compact model with ``edit``."""
    def damage(tmp, run):
        shutil.copytree(run, tmp / "m")
        edit(tmp / "m")
    return damage


def truncate(m):
    path = m / "compact.safetensors"
    path.write_bytes(path.read_bytes()[:100])


def empty(m):
    (m / "compact.safetensors").write_bytes(b"")


def bad_header(m):
    path = m / "compact.safetensors"
    raw = path.read_bytes()
    path.write_bytes((10**12).to_bytes(8, "little") + raw[8:])


def huge_width(m):
    graph = json.loads((m / "compact.json").read_text())
    node = next(n for n in graph["nodes"] if n.get("op") == "linear")
    node["units"] = 500000
    (m / "compact.json").write_text(json.dumps(graph))


def dotted_name(m):
    text = (m / "compact.json").read_text()
    name = next(n["name"] for n in json.loads(text)["nodes"] if n.get("op") == "linear")
    (m / "compact.json").write_text(text.replace(f'"{name}"', f'"{name}.x"'))


def truncated_checkpoint(m):
    path = m / "checkpoint.safetensors"
    path.write_bytes(path.read_bytes()[:200])


def toml_file(text):
    def damage(tmp, run):
        (tmp / "c.toml").write_text(text + "\n")
    return damage


def images(tmp, run):
    """12 grey 8x8 images of 3 classes in {tmp}/d.npz."""
    np.savez(tmp / "d.npz", x=np.random.default_rng(0).normal(size=(12, 1, 8, 8)),
             y=np.arange(12) % 3)


def binary_json(tmp, run):
    (tmp / "bin.json").write_bytes(bytes(range(256)))


def json_file(d):
    def damage(tmp, run):
        (tmp / "g.json").write_text(json.dumps(d))
    return damage


# ----------------------------------------------------------------- the corpus
D = ["discover", "--out", "{tmp}/out"]
M = [*D, "--data", "{tmp}/d.npz", "--quiet", "--epochs", "1", "--model"]
CASES = {
    # config files and fields
    "config is a folder": ([*D, "--config", "{tmp}/folder.toml"], a_folder, "is a folder"),
    "config is binary": ([*D, "--config", "{tmp}/bin.toml"], binary_file, "is not text"),
    "config missing": ([*D, "--config", "{tmp}/none.toml"], None, "does not exist"),
    "widths not a list": ([*D, *TEACHER, "--space-option", 'widths="abc"'], None,
                          "'space_options'"),
    "teacher_widths text": ([*D, *TEACHER, "--data-option", 'teacher_widths="abc"'], None,
                            "'teacher_widths': must be a list"),
    "seed 10**20": ([*D, *TEACHER, "--seed", str(10**20)], None, "'seed'"),
    "n_train 1e10": ([*D, *TEACHER, "--data-option", "n_train=1e10"], None,
                     "'n_train': must be an integer"),
    "width 1e9": ([*D, "--space", "mlp", "--space-option", "widths=[784, 1e9, 10]"], None,
                  "make it narrower"),
    "negative lr": ([*D, *TEACHER, "--lr", "-1"], None, "'lr'"),
    "unknown optimizer": ([*D, *TEACHER, "--optimizer", "rmsprop"], None, "choose one of"),
    "removed field in a config": ([*D, "--config", "{tmp}/c.toml"],
                                  toml_file("select_sweep = true"),
                                  "unknown config key 'select_sweep'"),
    "fused not a boolean": ([*D, *TEACHER, "--config", "{tmp}/c.toml"],
                            toml_file('fused = "yes"'), "'fused': expected true or false"),
    # run folders
    "resume a missing folder": (["discover", "--out", "{tmp}/none", "--resume"], None,
                                "nothing to resume"),
    "resume an empty folder": (["discover", "--out", "{tmp}/empty", "--resume"], empty_folder,
                               "nothing to resume"),
    "out is a file": (["discover", "--out", "{tmp}/bin.toml", *TEACHER], binary_file,
                      "is a file"),
    "truncated checkpoint": (["discover", "--out", "{tmp}/m", "--resume", "--quiet"],
                             model_file(truncated_checkpoint), "damaged"),
    # data files
    "IDX label 200": ([*D, "--data", "fashion-mnist", "--data-root", "{tmp}/fm"],
                      idx(label=200), "label 200 at record 0 is outside 0..9"),
    "truncated .gz IDX": ([*D, "--data", "fashion-mnist", "--data-root", "{tmp}/fm"],
                          idx(truncate=True), "cannot be read"),
    "CIFAR label 255": ([*D, "--data", "cifar10", "--data-root", "{tmp}/c10"],
                        cifar_label_255, "label 255"),
    "npz without y": ([*D, "--data", "{tmp}/d.npz"], npz(x=np.zeros((10, 3))), "missing"),
    "npz negative label": ([*D, "--data", "{tmp}/d.npz"],
                           npz(x=np.zeros((10, 3)), y=-np.ones(10, int)), "labels must be"),
    "csv with text": ([*D, "--data", "{tmp}/d.csv"], text_csv, "not a numeric CSV"),
    "data path missing": ([*D, "--data", "{tmp}/none.npz"], None, "does not exist"),
    "csv with NaN": ([*D, "--data", "{tmp}/d.csv"],
                     csv("a,b,label\n1,2,0\n# note\n\n3,nan,1\n4,5,0\n6,7,1\n"),
                     "d.csv: line 5, column 'b' is nan"),
    "csv with inf, target given": ([*D, "--data", "{tmp}/d.csv", "--data-option", "target=c"],
                                   csv("a,c,b\n1,0,2\n3,1,4\n5,0,-inf\n6,1,7\n"),
                                   "d.csv: line 4, column 'b' is -inf"),
    "csv NaN label, no target": ([*D, "--data", "{tmp}/d.csv"],
                                 csv("a,b\n1,0\n3,1\n5,nan\n6,1\n"),
                                 "line 4, column 'b' is nan (1 non-finite value(s) in all); "
                                 "replace them with numbers or drop those rows (the last "
                                 "column, taken as the label"),
    "csv float labels, no target": ([*D, "--data", "{tmp}/d.csv"],
                                    csv("a,b,price\n1,0,2.5\n3,1,4.5\n5,0,1.5\n6,1,7\n"),
                                    "column 'price': labels must be integers >= 0"),
    "csv one class": ([*D, "--data", "{tmp}/d.csv"],
                      csv("a,b,label\n1,2,1\n3,4,1\n5,6,1\n7,8,1\n"),
                      "a classifier needs at least 2 classes"),
    "csv without target: any error names the label": (
        [*D, "--data", "{tmp}/d.csv"], csv("a,b,label\n1,2,0\n3,4\n"),
        "line 3 has 2 values, the header names 3 columns) (the label is column 'label'"),
    "csv empty": ([*D, "--data", "{tmp}/d.csv"], csv(""), "d.csv: is empty"),
    "csv header only": ([*D, "--data", "{tmp}/d.csv"], csv("a,b,label\n"),
                        "no rows of numbers (the label is column 'label'"),
    "csv binary": ([*D, "--data", "{tmp}/d.csv"], binary_csv, "not a text CSV"),
    "npz with NaN": ([*D, "--data", "{tmp}/d.npz"],
                     npz(x=np.where(np.eye(10, 3) > 0, np.nan, 1.0), y=np.arange(10) % 2),
                     "d.npz: x[0, 0] is nan (3 non-finite value(s) in 'x')"),
    "npz with inf in y_val": ([*D, "--data", "{tmp}/d.npz"],
                              npz(x=np.zeros((10, 3)), y=np.arange(10) % 2,
                                  x_val=np.zeros((3, 3)), y_val=np.array([0, np.inf, 1])),
                              "d.npz: y_val[1] is inf"),
    "npz of text": ([*D, "--data", "{tmp}/d.npz"],
                    npz(x=np.array([["a", "b"]] * 10), y=np.arange(10) % 2),
                    "array 'x' holds <U1 values, not real numbers"),
    "npz one class": ([*D, "--data", "{tmp}/d.npz"],
                      npz(x=np.ones((10, 3)), y=np.zeros(10, int)),
                      "y: every label is 0, one class; a classifier needs at least 2 classes"),
    "npz not a zip": ([*D, "--data", "{tmp}/d.npz"], text_npz, "not an .npz archive"),
    "image folder, truncated PNG": ([*D, "--data", "{tmp}/img"],
                                    image_folder(damage_file=cut_in_half),
                                    "dog/2.png: cannot be decoded as an image"),
    "image folder, 0-byte PNG": ([*D, "--data", "{tmp}/img"],
                                 image_folder(damage_file=zero_bytes),
                                 "dog/2.png: cannot be decoded as an image (empty file)"),
    "image folder, one class": ([*D, "--data", "{tmp}/img"], image_folder(classes=["cat"]),
                                "one class folder ('cat') found; a classifier needs at least "
                                "2 classes"),
    "one class, model with 1 output": ([*D, "--data", "{tmp}/img", "--model",
                                        "helpers:tiny_cnn", "--model-option", "classes=1",
                                        "--model-option", "channels=3"],
                                       image_folder(classes=["cat"]), "at least 2 classes"),
    # a model (--model pkg.mod:callable) or a graph file (--space FILE.json) as the supernet
    "model not importable": ([*M, "no_such_pkg.mod:f"], images, "cannot import module"),
    "model: no such callable": ([*M, "helpers:tiny_cn"], images,
                                "has no 'tiny_cn' (did you mean tiny_cnn?)"),
    "model: not package:callable": ([*M, "resnet18"], images, "is not package.module:callable"),
    "model raises": ([*M, "helpers:failing_model"], images, "raised ValueError"),
    "model is not callable": ([*M, "helpers:NOT_CALLABLE"], images, "not a callable"),
    "model untraceable": ([*M, "helpers:untraceable"], images, "cannot trace"),
    "model and space": ([*M, "helpers:tiny_cnn", "--space", "convnet"], images, "not both"),
    "input shape text": ([*M, "helpers:tiny_cnn", "--input-shape", "3,x"], images,
                         "'input_shape': '3,x' is not a shape"),
    "input shape not the data's": ([*M, "helpers:tiny_cnn", "--input-shape", "3,8,8"], images,
                                   "--input-shape 1,8,8"),
    "model outputs not the classes": ([*M, "helpers:tiny_cnn", "--model-option", "classes=5"],
                                      images, "gives [5] outputs per sample, but dataset"),
    "graph file missing": ([*D, "--space", "{tmp}/none.json"], None, "does not exist"),
    "graph file not JSON": ([*D, "--space", "{tmp}/bin.json"], binary_json, "is not JSON"),
    "graph file not a graph": ([*D, "--space", "{tmp}/g.json"], json_file({"schema": 99}),
                               "not a usable ArchGraph"),
    "graph file for other data": ([*D, "--space", "{run}/supernet.json", "--data",
                                   "{tmp}/d.npz"], images, "adjust the space"),
    # model files given to export / render
    "truncated weights": (["export", "{tmp}/m"], model_file(truncate), "changed after"),
    "empty weights": (["export", "{tmp}/m"], model_file(empty), "changed after"),
    "bad safetensors header": (["export", "{tmp}/m"], model_file(bad_header), "changed after"),
    "width 500000 in compact.json": (["export", "{tmp}/m"], model_file(huge_width),
                                     "changed after"),
    "node name with a dot": (["render", "{tmp}/m"], model_file(dotted_name), "without '.'"),
    "export of no run": (["export", "{tmp}/none"], None, "not found"),
}


@pytest.mark.parametrize("case", CASES)
def test_bad_input_gets_one_clear_line(case, tmp_path, finished, capsys):
    argv, damage, message = CASES[case]
    if damage is not None:
        damage(tmp_path, finished)
    argv = [a.format(tmp=tmp_path, run=finished) for a in argv]
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) <= 3, err  # one line (plus a listing at most)
    assert not list(tmp_path.rglob(".*.tmp")) and not list(tmp_path.rglob(".*.tmp.*"))
    out = tmp_path / "out"
    assert not (out / "config.toml").exists()  # a refused run leaves nothing to block a re-run


def test_a_rerun_after_fixing_the_data_starts(tmp_path, capsys):
    """Bad data is refused before the run folder is touched, so the very same command
    runs once the file is fixed (no 'already holds this run')."""
    x = np.random.default_rng(0).normal(size=(40, 4))
    rows = [",".join(map(str, r)) + f",{i % 2}" for i, r in enumerate(x)]
    argv = ["discover", "--data", str(tmp_path / "d.csv"), "--out", str(tmp_path / "out"),
            "--space", "mlp", "--space-option", "widths=[4, 8, 2]", "--epochs", "1",
            "--quiet", "--finetune", "0", "--select", "none"]
    bad = rows.copy()
    bad[7] = bad[7].replace(rows[7].split(",")[2], "nan", 1)
    (tmp_path / "d.csv").write_text("a,b,c,d,label\n" + "\n".join(bad) + "\n")
    assert main(argv) == 2
    assert "line 9, column 'c' is nan" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    (tmp_path / "d.csv").write_text("a,b,c,d,label\n" + "\n".join(rows) + "\n")
    assert main(argv) == 0, capsys.readouterr().err
    assert (tmp_path / "out" / "report.json").exists()


def test_force_leaves_nothing_of_the_previous_run(tmp_path, finished):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    assert main(["export", str(run), "--format", "safetensors"]) == 0
    assert (run / "export" / "model.safetensors").exists() and (run / "compact.svg").exists()
    (run / "export" / "notes.txt").write_text("mine")
    assert main(["discover", *TEACHER, "--lam", "5", "--out", str(run), "--force"]) == 0
    assert not (run / "export").exists()  # an export of the old model would be wrong now
    growth = json.loads((run / "report.json").read_text())
    assert growth["config"]["lam"] == 5.0


def test_a_rerun_removes_temp_files_a_kill_left(tmp_path, finished):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    (run / "export").mkdir()
    left = [run / ".compact.svg.abc123.tmp", run / ".growth.png.x.tmp",
            run / "export" / ".model.onnx.q1.tmp.onnx", run / ".report.json.z.tmp"]
    for path in left:
        path.write_bytes(b"half")
    assert main(["render", str(run)]) == 0
    assert [p.exists() for p in left] == [False, False, True, True]
    assert main(["export", str(run), "--format", "safetensors"]) == 0
    assert not left[2].exists()
    assert main(["discover", "--out", str(run), "--resume", "--quiet"]) == 0
    assert not list(run.rglob(".*.tmp")) and not list(run.rglob(".*.tmp.*"))
