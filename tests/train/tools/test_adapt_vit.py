"""`python -m train.tools.adapt_vit`: a pretrained softmax ViT becomes an adapted step-0 training
checkpoint that `python -m train` fine-tunes."""

import os
import pickle
import shutil
import zipfile

import numpy as np
import pytest
from flax import nnx

from cbsa_jax.convert import save_safetensors, timm_state_dict, vit_from_timm
from tests._configs import CONFIGS, tiny_config
from tests._models import random_timm_state_dict as _random_timm
from train import loop
from train.loop import load_experiment
from train.tools import adapt_vit as adapt_cli

TINY = ["--config.model.name=vit_timm_nano", "--config.model.depth=1", "--config.mesh.data=1"]


def _pretrained(path, dim=64, depth=1):
    """A random timm ViT for 8 x 8 one-channel digits (patch 2, 4 x 4 grid)."""
    weights = _random_timm(dim=dim, depth=depth, patch=2, channels=1, hidden=4 * dim,
                           classes=10, grid=4)
    if path.endswith(".npz"):
        np.savez(path, **weights)
    else:
        save_safetensors(weights, path)


def test_adapt_writes_a_step0_checkpoint_that_trains(tmp_path, data_dir, capsys):
    path = str(tmp_path / "vit.safetensors")
    _pretrained(path)
    workdir = str(tmp_path / "run")
    code = adapt_cli.main(["--checkpoint", path, "--workdir", workdir, f"--config.data_dir="
                           f"{data_dir}", *TINY])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "--config.model.attention=agent" in out
    exp, state, meta = load_experiment(workdir)
    assert meta["step"] == 0 and meta["adapted_from"].endswith("vit.safetensors")
    assert meta["layout"] == "timm" and exp.config.model.attention == "agent"
    model = exp.model(state)
    assert type(model.blocks[0].attn).__name__ == "AgentAttention"
    # the same model as the library's loader builds (whose logits
    # tests/cbsa_jax/convert/test_timm.py checks)
    loaded = vit_from_timm(path, heads=4, attention="adapted", cells=(2, 2))
    assert nnx.graphdef(model) == nnx.graphdef(loaded)
    ours, theirs = nnx.to_flat_state(nnx.state(model)), dict(nnx.to_flat_state(nnx.state(loaded)))
    assert len(ours) == len(theirs)
    for key, value in ours:
        np.testing.assert_array_equal(value.get_value(), theirs[key].get_value(), err_msg=key)
    # python -m train resumes from the adapted step-0 checkpoint and fine-tunes it
    config = tiny_config(data_dir=data_dir, **{"model.name": "vit_timm_nano",
                                       "model.attention": "agent", "num_train_steps": 2})
    summary = loop.run(config, workdir)
    assert "resumed from" in capsys.readouterr().out and summary["step"] == 2
    _, tuned, _ = load_experiment(workdir)
    before = timm_state_dict(model)
    after = timm_state_dict(exp.model(tuned))
    assert not np.allclose(before["blocks.0.attn.qkv.weight"], after["blocks.0.attn.qkv.weight"])


def test_a_mismatched_checkpoint_is_one_error_naming_the_keys(tmp_path, capsys):
    path = str(tmp_path / "wide.npz")
    _pretrained(path, dim=32)  # the config's vit_timm_nano is 64 wide
    code = adapt_cli.main(["--checkpoint", path, "--workdir", str(tmp_path / "w"), *TINY])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "mis-shaped keys" in err and "patch_embed.proj.weight: checkpoint (32, 1, 2, 2)" in err
    assert not os.path.exists(tmp_path / "w" / "checkpoints")
    path = str(tmp_path / "missing.npz")
    _pretrained(path)
    weights = dict(np.load(path))
    del weights["blocks.0.norm1.bias"]
    np.savez(path, **weights)
    code = adapt_cli.main(["--checkpoint", path, "--workdir", str(tmp_path / "w"), *TINY])
    err = capsys.readouterr().err
    assert code == 2 and "missing keys ['blocks.0.norm1.bias']" in err


def test_adapt_the_first_k_blocks(tmp_path, capsys):
    path = str(tmp_path / "vit.npz")
    _pretrained(path, depth=2)
    workdir = str(tmp_path / "run")
    code = adapt_cli.main(["--checkpoint", path, "--workdir", workdir, "--blocks", "1",
                           *TINY, "--config.model.depth=2"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "--config.model.attention_blocks=1" in out
    exp, state, _ = load_experiment(workdir)
    assert exp.config.model.attention_blocks == 1
    kinds = [type(block.attn).__name__ for block in exp.model(state).blocks]
    assert kinds == ["AgentAttention", "SoftmaxAttention"]


BAD = [
    ([], "the following arguments are required: --checkpoint"),
    (["--checkpoint", "{missing}"], "--checkpoint: no file {missing}"),
    (["--checkpoint", "{text}"], "--checkpoint: cannot read {text} as a timm or big_vision ViT"),
    (["--checkpoint", "{code}"], "--checkpoint: cannot read {code} as a timm or big_vision ViT "
                                 "(ValueError: {code} is not a torch checkpoint this can read"),
    (["--checkpoint", "{other}"], "--checkpoint: {other} is not a ViT checkpoint: cannot tell"),
    (["--checkpoint", "{vit}", "--workdir", "{run}"], "--workdir: {run} already holds a run's "
                                                      "checkpoints"),
    (["--checkpoint", "{vit}", "--workdir", "{text}"], "--workdir: {text} is a file"),
    (["--checkpoint", "{vit}", "--config", "{lm_config}"],
     "--config: adapt_vit writes an image classifier's checkpoint, the config's task is "
     "'language'"),
    (["--checkpoint", "{vit}", "--blocks", "0"], "--blocks must be >= 1, got 0"),
    (["--checkpoint", "{vit}", "--blocks", "-1"], "--blocks must be >= 1, got -1"),
    (["--checkpoint", "{vit}", "--num_classes", "0"], "--num_classes must be >= 1, got 0"),
    (["--checkpoint", "{vit}", "--attention", "linear"], "argument --attention: invalid choice"),
]


@pytest.mark.parametrize("args,message", BAD)
def test_bad_input_is_one_line_naming_the_argument(args, message, task_runs, tmp_path, capsys):
    paths = {"missing": str(tmp_path / "missing.npz"), "text": str(tmp_path / "text.pth"),
             "other": str(tmp_path / "other.npz"), "vit": str(tmp_path / "vit.npz"),
             "code": str(tmp_path / "code.pth"),
             "run": str(tmp_path / "run"), "out": str(tmp_path / "out"),
             "lm_config": os.path.join(CONFIGS, "lm_stdlib.py")}
    (tmp_path / "text.pth").write_text("not a checkpoint")
    with zipfile.ZipFile(paths["code"], "w") as z:  # a pickle that calls code: both readers refuse
        z.writestr("code/data.pkl", pickle.dumps({"x": print}, protocol=2))
    np.savez(paths["other"], **{"tok_embed/embedding": np.zeros((4, 2), np.float32)})
    _pretrained(paths["vit"])
    shutil.copytree(task_runs["segmentation"], paths["run"])
    before = sorted(os.listdir(tmp_path / "run" / "checkpoints"))
    args = [a.format(**paths) for a in args]
    if "--workdir" not in args:
        args += ["--workdir", paths["out"]]
    capsys.readouterr()  # what making the runs printed
    code = adapt_cli.main([*args, *TINY])
    out, err = capsys.readouterr()
    err = err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: "), err
    assert message.format(**paths) in err[0]
    assert out == "" and not os.path.exists(paths["out"])
    assert sorted(os.listdir(tmp_path / "run" / "checkpoints")) == before
