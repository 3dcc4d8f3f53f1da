"""Nothing lost: a broken newest checkpoint falls back to an older one, rows are logged before saves."""
import glob
import json
import os

import numpy as np
import pytest

from aple_jax import checkpoint, train
from aple_jax.errors import CheckpointError
from aple_jax.prompt_files import PROMPTS_META_KEY
from aple_jax.run import run
from tests.helpers import tiny_config

# 20 training images at batch 8: 2 steps per epoch, 3 epochs; checkpoints at every step.
CONFIG = dict(dataset__shots=4, batch_size=8, eval_batch_size=64, optim__epochs=3, checkpoint_every_steps=1,
              log_every=1)


def _prompts(workdir):
    with np.load(os.path.join(workdir, "prompts.npz")) as f:
        return {k: f[k] for k in f.files if k != PROMPTS_META_KEY}


def _break(step_dir, how: str) -> None:
    """Truncates the largest array file of a checkpoint's state, or empties its meta JSON."""
    if how == "truncated_state":
        files = [f for f in glob.glob(os.path.join(step_dir, "state", "**", "d", "*"), recursive=True)
                 if os.path.isfile(f)]
        target = max(files, key=os.path.getsize)
        with open(target, "r+b") as f:
            f.truncate(os.path.getsize(target) // 2)
    else:
        open(os.path.join(step_dir, "meta", "metadata"), "w").close()


def test_broken_latest_checkpoint_falls_back_and_finishes_with_the_same_prompts(tmp_path):
    config = tiny_config("coop", **CONFIG)
    run(config, str(tmp_path / "full"))
    with pytest.raises(train.Preempted):
        run(config, str(tmp_path / "cut"), stop_at_step=5)   # saved at 4 (epoch 2 ends) and 5 (mid-epoch 3)
    ckpt_dir = tmp_path / "cut" / "checkpoints"
    assert sorted(int(d) for d in os.listdir(ckpt_dir) if d.isdigit()) == [4, 5]
    _break(str(ckpt_dir / "5"), "truncated_state")
    with pytest.warns(checkpoint.BrokenCheckpointWarning, match="checkpoint step 5 .* cannot be restored"):
        run(config, str(tmp_path / "cut"))
    full, cut = _prompts(tmp_path / "full"), _prompts(tmp_path / "cut")
    assert full.keys() == cut.keys()
    for key in full:
        np.testing.assert_array_equal(cut[key], full[key], err_msg=key)


def test_no_restorable_checkpoint_is_a_checkpoint_error_naming_the_directory(tmp_path):
    config = tiny_config("coop", **CONFIG)
    with pytest.raises(train.Preempted):
        run(config, str(tmp_path), stop_at_step=1)
    _break(str(tmp_path / "checkpoints" / "1"), "empty_meta")
    with pytest.raises(CheckpointError, match=f"no checkpoint in {tmp_path / 'checkpoints'} can be restored"):
        run(config, str(tmp_path))


def test_eval_only_from_a_run_with_a_broken_newest_checkpoint_warns_and_uses_the_older_one(tmp_path):
    """A truncated array file warns as an empty metadata file does; the source run directory is left as it is."""
    import shutil
    config = tiny_config("coop", **CONFIG)
    with pytest.raises(train.Preempted):
        run(config, str(tmp_path / "cut"), stop_at_step=5)   # checkpoints at 4 and 5, no prompts.npz
    older = tmp_path / "older"
    shutil.copytree(tmp_path / "cut", older)
    shutil.rmtree(older / "checkpoints" / "5")
    want = run(tiny_config("coop", eval_only_from=str(older), **CONFIG), str(tmp_path / "want"))
    for how in ("truncated_state", "empty_meta"):
        source = tmp_path / how
        shutil.copytree(tmp_path / "cut", source)
        _break(str(source / "checkpoints" / "5"), how)
        with pytest.warns(checkpoint.BrokenCheckpointWarning, match=r"checkpoint step 5 .* cannot be restored .*; "
                                                                    r"the newest older checkpoint is used"):
            got = run(tiny_config("coop", eval_only_from=str(source), **CONFIG), str(tmp_path / f"eval_{how}"))
        assert got["evals"] == want["evals"], how
        assert (source / "checkpoints" / "5").is_dir()


def test_rows_are_logged_before_the_checkpoint_that_follows_them(tmp_path, monkeypatch):
    """A run killed right after a save has every row up to the saved step in metrics.jsonl."""
    real_save = checkpoint.RunCheckpoints.save
    seen = []

    def save_then_check(self, step, state, meta):
        rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
        seen.append(step)
        assert max(r["step"] for r in rows) == step, (step, rows[-1])
        real_save(self, step, state, meta)

    monkeypatch.setattr(checkpoint.RunCheckpoints, "save", save_then_check)
    run(tiny_config("coop", **CONFIG), str(tmp_path))
    assert seen == [1, 2, 3, 4, 5, 6]
