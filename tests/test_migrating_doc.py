"""Every command of docs/migrating.md, run on tiny stand-ins: a fake DATA/ tree of the 11 datasets, released MaPLe
checkpoints built as the official trainer saves them, and `weights=$W` read as the `tiny` preset (SHRINK below)."""
import json
import os
import re
import subprocess
import sys

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from aple_jax.data.fake_trees import write_coop_tree  # noqa: E402
from aple_jax.data.names import canonical_name  # noqa: E402
from tests.test_clip_parity import TINY_TEXT, TINY_VISION, hf_clip, hf_to_openai  # noqa: E402
from tests.test_interop import TINY, official_state_dict, save_official  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOC = os.path.join(REPO, "docs", "migrating.md")
OFFICIAL_DATASETS = ("imagenet", "caltech101", "oxford_pets", "stanford_cars", "oxford_flowers", "food101",
                     "fgvc_aircraft", "sun397", "dtd", "eurosat", "ucf101")
RELEASED_DIR = "base2new/train_base/{}/shots_16/MaPLe/vit_b16_c2_ep5_batch4_2ctx/seed{}"


def doc_commands(text: str) -> list[str]:
    """The commands of the ```bash blocks, continuation lines joined."""
    out = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for command in block.replace("\\\n", " ").splitlines():
            command = " ".join(command.split())
            if command and not command.startswith("#"):
                out.append(command)
    return out


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """cwd with configs/ and launch.py, the env of the doc's variables."""
    root = tmp_path_factory.mktemp("migrating")
    data = str(root / "DATA")
    for name in OFFICIAL_DATASETS:   # 8 training images per class: a batch of 16 from the 2 base classes
        write_coop_tree(data, canonical_name(name), num_classes=4, per_class=(8, 1, 1))
    clip = hf_to_openai(hf_clip(TINY_TEXT, TINY_VISION, projection_dim=TINY.embed_dim).state_dict())
    for i, name in enumerate(OFFICIAL_DATASETS):
        for seed in (1, 2, 3):
            sd = official_state_dict("maple", clip, seed=10 * i + seed)
            save_official(str(root / "released" / RELEASED_DIR.format(name, seed)), "maple", sd)
    save_official(str(root / "mma_output"), "mma", official_state_dict("mma", clip, seed=7))
    # PromptKD: a student's model-best.pth.tar, and its released teacher (PromptSRC) in teacher_model/'s layout
    for folder, method, seed in (("kd_output", "promptkd", 8), ("teachers/DescribableTextures", "promptsrc", 9)):
        path = save_official(str(root / folder), method, official_state_dict(method, clip, seed=seed))
        os.rename(path, os.path.join(os.path.dirname(path), "model-best.pth.tar"))
    cwd = root / "cwd"
    cwd.mkdir()
    for name in ("configs", "launch.py"):
        os.symlink(os.path.join(REPO, name), cwd / name)
    env = dict(os.environ, PYTHONPATH=REPO, DATA=data, RELEASED=str(root / "released"),
               OUT=str(root / "released" / RELEASED_DIR.format("oxford_pets", 1)), MMA_OUT=str(root / "mma_output"),
               KD_OUT=str(root / "kd_output"), T=str(root / "teachers"),
               PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"], JAX_PLATFORMS="cpu")
    return cwd, env


# The 33-run sweep of released checkpoints runs as written with --dry-run (every run planned), and for real on two
# datasets and one seed (33 evaluations on a shared CPU would take many minutes).
SHRINK = {"--seeds 1,2,3 --datasets imagenet,caltech101,oxford_pets,stanford_cars,oxford_flowers,food101,"
          "fgvc_aircraft,sun397,dtd,eurosat,ucf101": "--seeds 1 --datasets oxford_pets,dtd"}


def run_command(command, cwd, env):
    command = command.replace("backbone=ViT-L/14,weights=$WL", "tiny").replace("weights=$W", "tiny")
    proc = subprocess.run(["bash", "-c", command], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{command}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


@pytest.mark.slow
def test_every_command_of_the_migration_guide_runs(world):
    cwd, env = world
    with open(DOC) as f:
        commands = doc_commands(f.read())
    assert len(commands) == 19 and all(c.startswith("python ") and "weights=$W" in c for c in commands[:4])
    outputs = []
    for command in commands:
        shrunk = command
        for long, short in SHRINK.items():
            if long in command:
                planned = run_command(command + " --dry-run", cwd, env)
                assert planned.count("would run") == 33, planned
                shrunk = command.replace(long, short)
        outputs.append(run_command(shrunk, cwd, env))

    assert "(maple, epoch 5) -> prompts.npz" in outputs[0]
    results = [json.loads((cwd / "runs" / d / "oxford_pets" / "seed1" / "results.json").read_text())
               for d in ("maple-imported", "maple-official")]
    assert results[0]["evals"] == results[1]["evals"] and results[0]["num_train_images"] == 0
    assert len(sorted(cwd.glob("runs/released/maple/**/results.json"))) == 2
    assert "runs/released/results.md" in outputs[4]
    table = (cwd / "runs" / "released" / "results.md").read_text()
    assert "MaPLe (reference)" in table and "82.28" in table
    assert (cwd / "exported" / "MultiModalPromptLearner" / "model.pth.tar-4").exists()   # :tiny trains 4 epochs
    printed = [line for line in outputs[7].splitlines() if line.startswith("python launch.py")]
    assert len(printed) == 33
    for method in ("clip_lora", "twostage", "mma", "mmrl"):   # CLIP-LoRA, 2SFS, MMA and MMRL as their users run them
        result = json.loads((cwd / "runs" / method / "dtd" / "seed1" / "results.json").read_text())
        assert result["method"] == method and result["evals"]
    official = json.loads((cwd / "runs" / "mma-official" / "dtd" / "seed1" / "results.json").read_text())
    assert official["method"] == "mma" and official["num_train_images"] == 0
    assert "(mma, epoch 5) -> mma-prompts.npz" in outputs[13]
    assert (cwd / "exported-mma" / "adapter_learner" / "model.pth.tar-5").exists()
    stage1, dpc = (json.loads((cwd / "runs" / d / "cars" / "seed1" / "results.json").read_text())
                   for d in ("promptsrc", "promptsrc+dpc"))
    assert dpc["method"] == "promptsrc+dpc" and [r["phase"] for r in dpc["schedule"]] == ["dpc"]
    assert dpc["accuracy"]["new"] == stage1["accuracy"]["new"]   # weight 0 on new: the stage-1 prompts
    assert "(promptkd, epoch 20) -> kd-prompts.npz" in outputs[17]
    official_kd = json.loads((cwd / "runs" / "promptkd-official" / "dtd" / "seed1" / "results.json").read_text())
    assert official_kd["method"] == "promptkd" and official_kd["num_train_images"] == 0 and official_kd["evals"]
    assert official_kd["kd_teacher"]["source"].endswith("DescribableTextures/VLPromptLearner/model-best.pth.tar")
