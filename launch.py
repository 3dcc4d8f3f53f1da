"""Entry point: `python launch.py --config configs/aple.py:dataset=OxfordPets,seed=1 --workdir runs/x`.

`--config.key=value` overrides any field; re-running the same command resumes from the run's last checkpoint.
"""
from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "A configs/*.py file, optionally with :arguments.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "The run directory (config, checkpoints, metrics, results).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    del argv
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)   # orbax logs every save at INFO
    from aple_jax.run import run
    from aple_jax.report import format_run

    results = run(_CONFIG.value, _WORKDIR.value)
    print(format_run(results))


if __name__ == "__main__":
    app.run(main)
