"""`python -m train.tools.generate`: greedy and sampled continuations of a trained byte language
model, and one line naming the argument (exit code 2) for every kind of bad input."""

import os

import pytest

from train.tools import generate


def _run(args, capsys):
    code = generate.main(args)
    out, err = capsys.readouterr()
    return code, out, err.strip().splitlines()


def test_greedy_is_explicit_and_deterministic(task_runs, capsys):
    args = ["--workdir", task_runs["language"], "--prompt", "def ", "--num_tokens", "8"]
    capsys.readouterr()
    code, out, err = _run([*args, "--greedy", "--samples", "2"], capsys)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].endswith("Greedy") and lines[1] == lines[3] and lines[1].startswith("def ")
    code, out, _ = _run([*args, "--top_k", "1", "--temperature", "0.5"], capsys)
    assert code == 0 and out.splitlines()[1] == lines[1]  # top-1 sampling is greedy too
    code, out, _ = _run([*args, "--temperature", "2.0", "--seed", "3"], capsys)
    assert code == 0 and out.splitlines()[0].endswith("Temperature")


BAD = [
    ([], "the following arguments are required: --workdir"),
    (["--workdir", "{missing}"], "--workdir: no directory {missing}"),
    (["--workdir", "{file}"], "--workdir: no directory {file}"),
    (["--workdir", "{empty}"], "--workdir: {empty} holds no training run"),
    (["--workdir", "{segmentation}"], "--workdir: {segmentation} holds a 'segmentation' run, "
                                      "not a language model"),
    (["--prompt", ""], "--prompt must not be empty"),
    (["--prompt", "ab\udcffc"], "--prompt is not valid UTF-8 (an invalid byte at offset 2)"),
    (["--prompt", "x" * 65], "--prompt (65 bytes) + --num_tokens (200) - 1 exceeds the "
                             "model's 64 positions"),
    (["--prompt", "x" * 60, "--num_tokens", "6"], "--prompt (60 bytes) + --num_tokens (6) - 1"),
    (["--num_tokens", "0"], "--num_tokens must be >= 1, got 0"),
    (["--num_tokens", "-3"], "--num_tokens must be >= 1, got -3"),
    (["--num_tokens", "ten"], "argument --num_tokens: invalid int value: 'ten'"),
    (["--samples", "0"], "--samples must be >= 1, got 0"),
    (["--temperature", "0"], "--temperature must be a finite number > 0"),
    (["--temperature", "-1"], "--temperature must be a finite number > 0"),
    (["--temperature", "nan"], "--temperature must be a finite number > 0"),
    (["--temperature", "inf"], "--temperature must be a finite number > 0"),
    (["--top_k", "-2"], "--top_k must be >= 1 (0 = no truncation), got -2"),
    (["--greedy", "--temperature", "0.5"], "--greedy takes no --temperature or --top_k"),
]


@pytest.mark.parametrize("args,message", BAD)
def test_bad_input_is_one_line_naming_the_argument(args, message, task_runs, tmp_path, capsys):
    paths = {"missing": str(tmp_path / "missing"), "file": str(tmp_path / "file"),
             "empty": str(tmp_path / "empty"), "segmentation": task_runs["segmentation"]}
    (tmp_path / "file").write_text("not a run")
    os.mkdir(tmp_path / "empty")
    args = [a.format(**paths) for a in args]
    if "--workdir" not in args and args:
        args = ["--workdir", task_runs["language"], *args]
    capsys.readouterr()  # what making the runs printed
    code, out, err = _run(args, capsys)
    assert code == 2 and len(err) == 1 and err[0].startswith("error: "), err
    assert message.format(**paths) in err[0]
    assert out == ""
    assert not os.path.exists(tmp_path / "missing")  # a wrong workdir is never created
