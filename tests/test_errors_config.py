"""Wrong configs fail first: one rule per test through config_schema, and through launch.py's command line."""
import builtins
import math
import os
import re
import time

import pytest

from aple_jax import config_schema
from aple_jax.clip import weights as clip_weights
from aple_jax.errors import ConfigError
from aple_jax.run import run
from tests import cli
from tests.cli import Case, launch
from tests.helpers import tiny_config

TINY = "configs/coop.py:tiny"

CLI_CASES = [
    Case("unknown_key", launch("--config", TINY, "--workdir", "/tmp/x", "--config.optim.lrr=1"),
         "unknown config key 'optim.lrr'; did you mean 'optim.lr'?"),
    Case("unknown_parent", launch("--config", TINY, "--workdir", "/tmp/x", "--config.optimm.lr=1"),
         "unknown config key 'optimm.lr'; did you mean 'optim.lr'?"),
    Case("unknown_arg", launch("--config", TINY + ",shotz=3", "--workdir", "/tmp/x"), "'shotz'"),
    Case("bad_float", launch("--config", TINY, "--workdir", "/tmp/x", "--config.optim.lr=abc"),
         "--config.optim.lr=abc"),
    Case("no_config_file", launch("--config", "configs/nope.py", "--workdir", "/tmp/x"), "configs/nope.py"),
    Case("two_presets", launch("--config", "configs/coop.py:tiny,demo", "--workdir", "/tmp/x"), "'demo' and 'tiny'"),
    Case("shots_arg", launch("--config", TINY + ",shots=-3", "--workdir", "/tmp/x"), "shots=-3"),
    Case("negative_lr", launch("--config", TINY, "--workdir", "/tmp/x", "--config.optim.lr=-0.1"),
         "optim.lr=-0.1"),
    Case("nan_lr", launch("--config", TINY, "--workdir", "/tmp/x", "--config.optim.lr=nan"), "optim.lr=nan"),
    Case("batch_zero", launch("--config", TINY, "--workdir", "/tmp/x", "--config.batch_size=0"), "batch_size=0"),
    Case("eval_batch_zero", launch("--config", TINY, "--workdir", "/tmp/x", "--config.eval_batch_size=0"),
         "eval_batch_size=0"),
    Case("log_every_zero", launch("--config", TINY, "--workdir", "/tmp/x", "--config.log_every=0"), "log_every=0"),
    Case("shots_key", launch("--config", TINY, "--workdir", "/tmp/x", "--config.dataset.shots=-3"),
         "dataset.shots=-3"),
    Case("epochs_zero", launch("--config", TINY, "--workdir", "/tmp/x", "--config.optim.epochs=0"),
         "optim.epochs=0"),
    Case("dtype", launch("--config", TINY, "--workdir", "/tmp/x", "--config.backbone.dtype=float16"),
         "backbone.dtype='float16'"),
    Case("depth", launch("--config", TINY, "--workdir", "/tmp/x", "--config.prompts.text.depth=5"),
         "prompts.text.depth=5"),
    Case("n_ctx", launch("--config", TINY, "--workdir", "/tmp/x", "--config.prompts.text.n_ctx=75"),
         "prompts.text.n_ctx=75"),
    Case("setting", launch("--config", TINY, "--workdir", "/tmp/x", "--config.setting=fewshot"),
         "setting='fewshot'"),
    Case("temperature", launch("--config", "configs/aple.py:tiny", "--workdir", "/tmp/x", "--config.kl.temperature=0"),
         "kl.temperature=0"),
    Case("stage1_order", launch("--config", "configs/aple.py:tiny", "--workdir", "/tmp/x",
                                "--config.stage1.order=XY"), "stage1.order='XY'"),
    Case("dataset_name", launch("--config", TINY, "--workdir", "/tmp/x", "--config.dataset.name=Petz"), "'Petz'"),
    Case("dataset_arg_empty", launch("--config", TINY + ",dataset=", "--workdir", "/tmp/x"),
         "config argument dataset= in 'tiny,dataset=' has no value"),
    Case("data_root", launch("--config", TINY + ",dataset=custom,data=/nonexistent/split.json", "--workdir", "/tmp/x"),
         "/nonexistent/split.json"),
    Case("plugin", launch("--config", TINY + ",plugin=nope", "--workdir", "/tmp/x"), "plugin='nope'; expected one of"),
    Case("plugin_key", launch("--config", TINY, "--workdir", "/tmp/x", "--config.plugin=nope"), "plugin='nope'"),
    Case("dpc_weight", launch("--config", TINY + ",plugin=dpc", "--workdir", "/tmp/x", "--config.dpc.weight=0"),
         "dpc.weight=0"),
    Case("backbone_name", launch("--config", TINY, "--workdir", "/tmp/x", "--config.backbone.name=ViT-X"),
         "backbone.name='ViT-X'"),
]


@pytest.fixture(scope="module")
def results():
    return cli.run_all(CLI_CASES)


@pytest.mark.parametrize("case", CLI_CASES, ids=lambda c: c.name)
def test_launch_refuses_a_wrong_config_in_one_line(case, results):
    cli.assert_user_error(case, results[case.name])


def test_verbosity_keeps_the_traceback():
    proc = cli.run_case(Case("v", launch("--config", TINY, "--workdir", "/tmp/x", "--config.optim.lrr=1",
                                         "--verbosity=1"), ""))
    assert proc.returncode != 0 and "Traceback" in proc.stderr and "optim.lrr" in proc.stderr


# ------------------------------------------------------------------------------------------- one test per rule

BAD_VALUES = [
    ("seed", -1), ("optim.lr", 0.0), ("optim.lr", -1.0), ("optim.lr", math.inf), ("optim.epochs", 0),
    ("optim.momentum", 1.0), ("optim.weight_decay", -1e-4), ("optim.warmup_epochs", -1), ("optim.warmup_lr", 0.0),
    ("batch_size", 0), ("eval_batch_size", 0), ("log_every", 0), ("checkpoint_every_steps", -1),
    ("checkpoint_min_steps", -1), ("dataset.shots", -3), ("dataset.num_workers", -1), ("dataset.synthetic.num_classes", 1),
    ("dataset.synthetic.train_per_class", 0), ("dataset.synthetic.test_per_class", 0),
    ("dataset.synthetic.image_size", 0), ("prompts.text.n_ctx", 0), ("prompts.text.depth", -1),
    ("prompts.vision.n_ctx", 0), ("prompts.vision.depth", -1), ("prompts.vision.init_std", -0.1),
    ("adapter.sigma", 0.0), ("adapter.alpha", 1.5), ("kl.temperature", 0.0), ("gpa.mean", math.nan),
    ("gpa.std", 0.0), ("stage1.epochs", 0), ("stage1.kl_weight", -1.0), ("stage2.epochs", 0),
    ("distributed.num_processes", -1), ("cocoop.prompts_per_pass", -1), ("loss_weights.ce", -1.0),
    ("method", "coopp"), ("setting", "fewshot"), ("backbone.dtype", "float16"), ("adapter.freq_units", "hz"),
    ("adapter.kernel_norm", "sum"), ("adapter.teacher_input", "both"), ("kl.direction", "both"),
    ("kl.reduction", "mean"), ("teacher.templates", "all"), ("teacher.ensemble", "median"),
    ("teacher.images", "cache"), ("zeroshot.templates", "all"), ("stage1.order", "XY"),
    ("stage1.granularity", "layer"), ("stage1.untrained_modality", "frozen"), ("stage1.trained_modality", "init"),
    ("stage2.loss", "kl"), ("stage1.feature_l1", (1.0,)), ("dataset.crop_scale", (0.5, 0.2)),
    ("pack_seeds", "1,x"), ("pack_seeds", "-1"), ("dataset.name", "Petz"), ("backbone.name", "ViT-X"),
    ("dataset.root", "/nonexistent/data"), ("mmrl.alpha", 1.5), ("mmrl.reg_weight", -1.0), ("mmrl.n_tokens", 0),
    ("dpc.weight", 0.0), ("dpc.weight", 1.5), ("dpc.weight_new", 1.5), ("dpc.top_k", 1), ("dpc.top_k", 2.5),
    ("dpc.min_negatives", -1), ("dpc.min_negatives", 9), ("dpc.epochs", 0), ("dpc.lr", 0.0),
    ("dpc.decoupled", ("text/(ctx",)), ("dpc.decoupled", "text/ctx"),
]


def _config(key, value):
    if key.startswith("dpc."):
        c = tiny_config("coop", "tiny,plugin=dpc")
    else:
        c = tiny_config(key.split(".")[0] if key.startswith(("cocoop.", "mmrl.")) else "aple")
    *parents, last = key.split(".")
    node = c
    for p in parents:
        node = node[p]
    node._fields[last] = value   # past the type check: an edited config.json can hold anything
    return c


def test_the_tiny_presets_of_every_method_pass():
    from configs import aple, cocoop, coop, ivlp, kgcoop, maple, mmrl, promptsrc, zeroshot
    for m in (aple, cocoop, coop, ivlp, kgcoop, maple, mmrl, promptsrc, zeroshot):
        for arg in (None, "tiny", "demo", "xd", "dg"):
            config_schema.validate(m.get_config(arg))


@pytest.mark.parametrize("key,value", BAD_VALUES, ids=lambda v: str(v))
def test_each_rule_names_its_key_and_value(key, value):
    with pytest.raises(ConfigError, match=f"^{re.escape(key)}=") as info:
        config_schema.validate(_config(key, value))
    assert "more:" not in str(info.value)   # this rule alone is broken


@pytest.mark.parametrize("key,value,needle", [
    ("prompts.vision.depth", 3, "vision tower has 2 layers"),
    ("prompts.text.depth", 3, "text tower has 2 layers"),
    ("prompts.text.n_ctx", 74, "no room for a class name"),
    ("mmrl.start", 3, "towers have 2 blocks"),
])
def test_cross_field_rules_against_the_backbone(key, value, needle):
    with pytest.raises(ConfigError, match=needle):
        config_schema.validate(_config(key, value))


def test_dpcs_stage1_run_is_a_path_checked_with_the_others():
    with pytest.raises(ConfigError, match="^dpc.stage1_from: .*'gcs://b/run'"):
        config_schema.validate(_config("dpc.stage1_from", "gcs://b/run"))


def test_maple_depth_is_bounded_by_the_vision_tower():
    c = tiny_config("maple")
    c.backbone.name = "world"          # 4 + 4 layers: within the text tower, MaPLe maps into the vision one
    c.prompts.text.depth = 4
    config_schema.validate(c)
    c.prompts.text.depth = 5
    with pytest.raises(ConfigError, match="prompts.text.depth=5"):
        config_schema.validate(c)


def test_unknown_keys_get_a_did_you_mean():
    c = tiny_config("coop")
    with c.unlocked():
        c.optim.lrr = 0.1
    with pytest.raises(ConfigError, match="unknown config key 'optim.lrr'; did you mean 'optim.lr'"):
        config_schema.validate(c)


def test_every_problem_is_listed_at_once():
    c = tiny_config("coop", batch_size=0, log_every=0)
    with pytest.raises(ConfigError, match=r"batch_size=0.*and 1 more: log_every=0"):
        config_schema.validate(c)


def test_a_wrong_config_fails_fast_and_opens_no_weights_file(tmp_path, monkeypatch):
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"not read")
    opened = []
    real_open = builtins.open

    def spy(file, *args, **kwargs):
        if isinstance(file, (str, os.PathLike)) and os.fspath(file) == str(weights):
            opened.append(file)
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", spy)
    monkeypatch.setattr(clip_weights, "load_clip", lambda path: opened.append(path))
    c = tiny_config("coop", optim__lr=-1.0)
    c.backbone.weights = str(weights)
    start = time.perf_counter()
    with pytest.raises(ConfigError, match="optim.lr=-1.0"):
        run(c, str(tmp_path / "run"))
    assert time.perf_counter() - start < 5
    assert not opened
    assert not (tmp_path / "run").exists()
