"""Plug-ins: additions that go on top of a method (DePT's head, DPC's second stage), chosen by `config.plugin`.

A plug-in is a mixin class placed before the base method's class: the composed class, named `<method>+<plugin>`,
extends through `super()` what the plug-in changes (`init`, `phases`, `begin_phase`, `train_outputs`,
`own_loss_terms`, `eval_logits`). Its loss terms are its `own_terms`, added to the base method's; its settings are
the config section named after it, whose defaults are the mixin's `defaults` (`plugin=<name>` adds the section);
those that change the logits of trained prompts are its `eval_settings`, recorded in prompts files and checked
before the prompts are evaluated (aple_jax.prompt_files).
"""
from __future__ import annotations

import functools
from typing import Any

import ml_collections

from aple_jax.methods import METHODS
from aple_jax.methods.base import Method
from aple_jax.plugins.dept import DePT
from aple_jax.plugins.dpc import DPC

PLUGINS: dict[str, type] = {"dept": DePT, "dpc": DPC}
# The methods a plug-in goes on: their prompts, phases and logits are what the plug-ins extend.
BASES = ("coop", "maple", "promptsrc", "ivlp", "aple")


def method_name(config: ml_collections.ConfigDict | dict[str, Any]) -> str:
    """What results.json and the report call a run: the method, `+<plugin>` when one is on (its own rows)."""
    plugin = config.get("plugin", "")
    return f"{config['method']}+{plugin}" if plugin else config["method"]


def problem(method: str, plugin: str) -> str | None:
    """Why `plugin` cannot go on `method` (one line), or None when it can."""
    if not plugin:
        return None
    if plugin not in PLUGINS:
        return f"plugin={plugin!r}; expected one of {', '.join(map(repr, ('',) + tuple(PLUGINS)))}"
    if method not in BASES:
        return f"plugin={plugin!r} goes on the methods {', '.join(BASES)}; method={method!r} is not one of them"
    return None


def defaults(plugin: str) -> ml_collections.ConfigDict | None:
    """The plug-in's config section at its defaults (None for a plug-in without settings or an unknown name)."""
    mixin = PLUGINS.get(plugin)
    values = getattr(mixin, "defaults", None)
    return ml_collections.ConfigDict(values) if values else None


def settings(config: ml_collections.ConfigDict, plugin: str) -> dict[str, Any]:
    """The plug-in's settings: its defaults, overridden by the config's section when the config has one."""
    section = config.get(plugin)
    return {**PLUGINS[plugin].defaults, **(section.to_dict() if section is not None else {})}


@functools.cache
def compose(method: str, plugin: str) -> type[Method]:
    """The class of `method` with `plugin` on: the mixin first, its loss terms beside the method's."""
    base, mixin = METHODS[method], PLUGINS[plugin]
    own_terms = {**base.own_terms, **getattr(mixin, "own_terms", {})}
    return type(f"{base.__name__}+{mixin.__name__}", (mixin, base),
                {"name": f"{method}+{plugin}", "own_terms": own_terms})
