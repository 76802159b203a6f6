"""`python -m train.tools.predict_masks`: one line naming the argument (exit code 2) for every
kind of bad input; nothing is written. (What it writes for a good run is checked with the
segmentation task, tests/train/tasks/test_segmentation.py.)"""

import os

import pytest

from train.tools import predict_masks

BAD = [
    (["--out", "{out}"], "the following arguments are required: --workdir"),
    (["--workdir", "{segmentation}"], "the following arguments are required: --out"),
    (["--workdir", "{missing}", "--out", "{out}"], "--workdir: no directory {missing}"),
    (["--workdir", "{file}", "--out", "{out}"], "--workdir: no directory {file}"),
    (["--workdir", "{empty}", "--out", "{out}"], "--workdir: {empty} holds no training run"),
    (["--workdir", "{language}", "--out", "{out}"],
     "--workdir: {language} holds a 'language' run, not segmentation"),
    (["--workdir", "{segmentation}", "--out", "{file}"], "--out: {file} is a file"),
    (["--workdir", "{segmentation}", "--out", "{out}", "--images", "0"],
     "--images must be >= 1, got 0"),
    (["--workdir", "{segmentation}", "--out", "{out}", "--rows", "-1"],
     "--rows must be >= 1, got -1"),
    (["--workdir", "{segmentation}", "--out", "{out}", "--limit", "0"],
     "--limit must be >= 1, got 0"),
    (["--workdir", "{segmentation}", "--out", "{out}", "--images", "x"],
     "argument --images: invalid int value: 'x'"),
]


@pytest.mark.parametrize("args,message", BAD)
def test_bad_input_is_one_line_naming_the_argument(args, message, task_runs, tmp_path, capsys):
    (tmp_path / "file").write_text("not a directory")
    os.mkdir(tmp_path / "empty")
    paths = {"missing": str(tmp_path / "missing"), "file": str(tmp_path / "file"),
             "empty": str(tmp_path / "empty"), "out": str(tmp_path / "out"),
             "segmentation": task_runs["segmentation"], "language": task_runs["language"]}
    capsys.readouterr()  # what making the runs printed
    code = predict_masks.main([a.format(**paths) for a in args])
    out, err = capsys.readouterr()
    err = err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: "), err
    assert message.format(**paths) in err[0]
    assert out == "" and not os.path.exists(tmp_path / "out")
    assert not os.path.exists(tmp_path / "missing")
