"""Official prompt checkpoint -> our prompts file, with provenance.

    python -m aple_jax.interop.import_prompts CKPT --config configs/maple.py:ARGS --out prompts.npz [--method M]

CKPT is a Dassl checkpoint (`<output>/<ModelName>/model.pth.tar-<epoch>`, `model-best.pth.tar`) or a bare state
dict (`.pth`, `.pt`) of CoOp, CoCoOp, KgCoOp, MaPLe, IVLP, PromptSRC, MMA, MMRL or a PromptKD student. The method
is detected from its keys (`--method` reads it as that method's layout instead) and must be the config's; the prompt
lengths, depths and backbone come from the config (`--config.key=value` overrides fields). The prompts file records
the config's method, backbone and prompt shape and the source checkpoint and epoch, so
`--config.eval_only_from=prompts.npz` is checked like a run's prompts. A PromptKD student imports without its
teacher (its projector says the teacher's width); evaluating it needs the teacher (`kd.teacher`). Local or gs://
paths.
"""
from __future__ import annotations

import jax
from absl import app, flags
from ml_collections import config_flags

from aple_jax.errors import error_boundary

_CONFIG = config_flags.DEFINE_config_file("config", None, "A configs/*.py file, optionally with :arguments.",
                                          lock_config=True)
_OUT = flags.DEFINE_string("out", None, "The prompts .npz to write.")
_METHOD = flags.DEFINE_string("method", "", "Read the checkpoint as this method's layout (default: detect).")
flags.mark_flags_as_required(["config", "out"])


def import_checkpoint(path: str, config, out: str, method: str = "") -> dict:
    """Reads `path` for `config` and writes `out`; returns the provenance written."""
    from aple_jax import paths, prompt_files
    from aple_jax.clip.backbone import load_backbone
    from aple_jax.interop import convert, dassl
    from aple_jax.methods import build_method

    for what, given in (("checkpoint", path), ("--out", out)):
        paths.check_path(given, what)
    convert.check_supported(config.method)
    convert.check_no_plugin(config.get("plugin", ""), f"--config with plugin={config.get('plugin', '')}")
    ckpt = dassl.read(path)
    found = convert.method_for(ckpt, config.method, method or None)
    b = config.backbone
    backbone, clip_params, tokenizer = load_backbone(b.name, b.weights, b.tokenizer, b.dtype)
    if found == "promptkd":   # a student's tree needs its teacher's width only: read from the file, no teacher loaded
        from aple_jax.methods.promptkd import PromptKD, TeacherWidth
        width = convert.projector_width(ckpt) or backbone.cfg.embed_dim
        model = PromptKD(config, backbone, tokenizer, teacher=TeacherWidth(width))
    else:
        model = build_method(config, backbone, tokenizer)
    prompts_like = jax.eval_shape(model.init, jax.random.key(0), clip_params)
    prompts = convert.to_prompts(ckpt, config, backbone.cfg, prompts_like, method or None)
    meta = prompt_files.prompts_meta(config, None, source=convert.source_info(ckpt, found))
    prompt_files.save_prompts(out, prompts, meta)
    return meta


def main(argv: list[str]) -> None:
    if len(argv) != 2:
        raise app.UsageError("give one checkpoint: python -m aple_jax.interop.import_prompts CKPT --config ... "
                             "--out prompts.npz")
    with error_boundary():
        meta = import_checkpoint(argv[1], _CONFIG.value, _OUT.value, _METHOD.value)
        src = meta["source"]
        print(f"{src['checkpoint']} ({src['method']}, epoch {src['epoch']}) -> {_OUT.value}")


if __name__ == "__main__":
    app.run(main)
