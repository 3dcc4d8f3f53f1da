"""The field's recipes (batch 4 for APLe and MaPLe, 32 for CoOp) on 8 devices: the data axis takes the largest
device count that divides the batch, says so in one line, and trains to the 1-device result."""
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from aple_jax import sharding
from aple_jax.errors import ConfigError
from tests.helpers import finish, result_line

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

RECIPES = {   # method: (recipe batch, overrides that keep the tiny run short)
    "aple": (4, ["dataset.shots=4", "stage1.epochs=1", "stage2.epochs=1"]),
    "maple": (4, ["dataset.shots=4", "optim.epochs=1"]),
    "coop": (32, ["dataset.shots=8", "optim.epochs=2"]),
}


class FakeDevice:
    def __init__(self, process_index: int, id: int):
        self.process_index, self.id = process_index, id

    def __repr__(self) -> str:
        return f"d{self.process_index}.{self.id}"


def test_data_axis_is_the_largest_count_that_divides_the_batch():
    eight = [FakeDevice(0, i) for i in range(8)]
    assert len(sharding.data_devices(4, eight)) == 4
    assert len(sharding.data_devices(32, eight)) == 8
    assert len(sharding.data_devices(12, eight)) == 6
    assert len(sharding.data_devices(1, eight)) == 1
    two_hosts = [FakeDevice(p, i) for p in (0, 1) for i in range(4)]
    chosen = sharding.data_devices(4, two_hosts)       # 2 per host: both hosts feed their half of the batch
    assert [(d.process_index, d.id) for d in chosen] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert len(sharding.data_devices(6, two_hosts)) == 6
    with pytest.raises(ConfigError, match="batch_size=3"):
        sharding.data_devices(3, two_hosts)


def test_all_devices_in_use_say_nothing():
    assert sharding.describe_data_devices(jax.devices(), 4) is None


def _start(tmp_path, method: str, devices: int) -> subprocess.Popen:
    batch, extra = RECIPES[method]
    workdir = str(tmp_path / f"{method}-{devices}")
    sets = [f"--set=batch_size={batch}", "--set=eval_batch_size=20"] + [f"--set={s}" for s in extra]
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu")
    return subprocess.Popen([sys.executable, "tests/run_worker.py", workdir, method, *sets], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(RECIPES))
def test_recipe_batch_trains_on_8_devices_like_on_1(tmp_path, method):
    stdout, one_stdout = finish([_start(tmp_path, method, d) for d in (8, 1)])   # side by side: each compiles on a core
    eight, one = result_line(stdout), result_line(one_stdout)
    batch = RECIPES[method][0]
    used = min(8, batch)
    assert eight["device_count"] == 8
    notes = [l for l in stdout.splitlines() if l.startswith("devices:")]
    if used < 8:
        assert notes == [f"devices: batch_size={batch} is split over {used} of the 8 devices (the largest count "
                         f"that divides it); {8 - used} stay idle. A larger batch uses more; packed seeds "
                         f"(--config.pack_seeds=1,2,3) give the devices in use more work per step"]
    else:
        assert notes == []
    assert eight["prompts"].keys() == one["prompts"].keys()
    for key in one["prompts"]:
        x, y = np.asarray(eight["prompts"][key]), np.asarray(one["prompts"][key])
        assert np.linalg.norm(x - y) <= 1e-5 * np.linalg.norm(y), key
