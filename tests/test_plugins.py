"""Plug-ins over methods (aple_jax/plugins): composition, config, validation, names of rows, old run directories.

A probe plug-in stands in for the real ones here; each plug-in's own behaviour is tested in its own file."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from aple_jax import config_schema, plugins
from aple_jax import prompts as P
from aple_jax.clip.backbone import load_backbone
from aple_jax.errors import ConfigError
from aple_jax.methods import build_method
from aple_jax.methods.base import Method
from aple_jax.prompt_files import prompt_config
from aple_jax.reporting.groups import differing_keys
from aple_jax.run import check_workdir_config
from tests.helpers import tiny_config


class Probe:
    """Scales the logits on the base split by the probe's setting; adds a leaf and a loss term of its own."""
    defaults = {"factor": 2.0}
    own_terms = {"probe": ""}

    def init(self, rng, clip_params, classnames=()):
        return {**super().init(rng, clip_params, classnames), "probe": {"w": jnp.ones(())}}

    def eval_logits(self, prompts, clip_params, class_side, images, split):
        logits = super().eval_logits(prompts, clip_params, class_side, images, split)
        return logits * plugins.settings(self.config, "probe")["factor"] if split == "base" else logits


@pytest.fixture
def probe(monkeypatch):
    monkeypatch.setitem(plugins.PLUGINS, "probe", Probe)


@pytest.fixture(scope="module")
def tiny():
    return load_backbone("tiny", "")


def test_the_config_argument_and_the_override_build_the_composed_method(probe, tiny):
    backbone, params, tokenizer = tiny
    config = tiny_config("promptsrc", arg="tiny,plugin=probe")
    assert config.plugin == "probe" and config.probe.factor == 2.0
    config_schema.validate(config)
    method = build_method(config, backbone, tokenizer)
    assert method.name == "promptsrc+probe" and type(method).__mro__[1:3] == (Probe, Method)
    assert method.own_terms == {"probe": ""}
    overridden = tiny_config("promptsrc", plugin="probe")   # --config.plugin=probe: the section's defaults
    config_schema.validate(overridden)
    assert build_method(overridden, backbone, tokenizer).name == "promptsrc+probe"
    assert plugins.settings(overridden, "probe") == {"factor": 2.0}
    config.probe.factor = 3.0
    assert plugins.settings(config, "probe") == {"factor": 3.0}
    assert plugins.method_name(config) == "promptsrc+probe" and plugins.method_name(tiny_config("coop")) == "coop"


def test_the_plugin_extends_the_base_method_through_super(probe, tiny):
    backbone, params, tokenizer = tiny
    base = build_method(tiny_config("maple"), backbone, tokenizer)
    with_probe = build_method(tiny_config("maple", arg="tiny,plugin=probe"), backbone, tokenizer)
    tree = with_probe.init(jax.random.key(0), params)
    assert sorted(set(P.flatten(tree)) - set(P.flatten(base.init(jax.random.key(0), params)))) == ["probe/w"]
    texts = base.class_texts(params, ["a", "b", "c"])
    side = base.text_features(tree, params, texts)
    images = jnp.asarray(np.random.default_rng(0).normal(size=(2, 32, 32, 3)), jnp.float32)
    new = with_probe.eval_logits(tree, params, side, images, "new")
    np.testing.assert_array_equal(new, base.eval_logits(tree, params, side, images, "new"))
    np.testing.assert_array_equal(with_probe.eval_logits(tree, params, side, images, "base"), 2.0 * new)


@pytest.mark.parametrize("arg, needle", [
    ("plugin=nope", "plugin='nope'; expected one of '', "),
    ("plugin=probe", "plugin='probe' goes on the methods coop, maple, promptsrc, ivlp, aple; method='kgcoop'"),
])
def test_an_unknown_plugin_or_an_unsupported_base_is_refused_in_one_line(probe, arg, needle):
    with pytest.raises(ConfigError) as e:
        config_schema.validate(tiny_config("kgcoop", arg=f"tiny,{arg}"))
    assert needle in str(e.value) and "'probe'" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="probe.factor"):   # the section belongs to the plug-in's config
        config_schema.validate(tiny_config("coop", arg="tiny,plugin=probe", plugin=""))


def test_run_directories_and_results_from_before_plugins_still_match(tmp_path):
    config = tiny_config("coop")
    check_workdir_config(str(tmp_path), config)
    saved = json.loads((tmp_path / "config.json").read_text())
    del saved["plugin"]                             # as written before the key existed
    (tmp_path / "config.json").write_text(json.dumps(saved))
    check_workdir_config(str(tmp_path), config, write=False)
    saved.pop("environment")                        # the header beside the config
    assert differing_keys(saved, config.to_dict()) == []
    assert "plugin" not in prompt_config(config)    # prompts files written before plug-ins still load
    assert prompt_config(tiny_config("coop", plugin="dept"))["plugin"] == "dept"
