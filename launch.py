"""Entry point: `python launch.py --config configs/aple.py:dataset=OxfordPets,seed=1 --workdir runs/x`.

`--config.key=value` overrides any field; re-running the same command resumes from the run's last checkpoint.
A mistake in the command or its inputs prints one `error:` line (and a `hint:`) and exits with status 2;
`--verbosity=1` or APLE_JAX_TRACEBACK=1 keeps the traceback (docs/errors.md).
"""
import os

from absl import app, flags, logging
from ml_collections import config_flags

from aple_jax.errors import TRACEBACK_ENV, error_boundary, exit_at_once_after_storage_faults
from aple_jax.flag_errors import parse_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "A configs/*.py file, optionally with :arguments.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "The run directory (config, checkpoints, metrics, results).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    del argv
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)   # orbax logs every save at INFO
    elif flags.FLAGS.verbosity >= 1:
        os.environ[TRACEBACK_ENV] = "1"
    with error_boundary():
        from aple_jax.reporting.tables import format_run
        from aple_jax.run import run

        results = run(_CONFIG.value, _WORKDIR.value)
    print(format_run(results))


if __name__ == "__main__":
    with exit_at_once_after_storage_faults():
        app.run(main, flags_parser=lambda argv: parse_flags(flags.FLAGS, argv))
