"""The room command: a linear probe on frozen world-CLIP features next to zero-shot."""
import json
import subprocess
import sys

import jax.numpy as jnp
import numpy as np

from aple_jax.world import room
from aple_jax.world.zeroshot import zero_shot_accuracy


def test_probe_separates_linearly_separable_classes():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(5, 16))
    y = np.repeat(np.arange(5), 20)
    x = centres[y] + 0.1 * rng.normal(size=(100, 16))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    w = room.fit_probe(jnp.asarray(x, jnp.float32), jnp.asarray(y), 5, 1e-6)
    assert float(((x @ w[:-1] + w[-1]).argmax(-1) == y).mean()) == 1.0


def test_room_command_measures_an_inverted_world(tmp_path):
    """Inverted colours: the class names mislead zero-shot CLIP, the image features still hold the answer."""
    out = subprocess.run([sys.executable, "-m", "aple_jax.world.room", "--datasets", "WorldScenes-Invert",
                          "--pool", "16", "--seeds", "1", "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=600, check=True)
    assert "| WorldScenes-Invert | 48 |" in out.stdout
    rows = json.loads((tmp_path / "room.json").read_text())["rows"]
    assert [r["dataset"] for r in rows] == ["WorldScenes-Invert"]
    r = rows[0]
    assert r["zero_shot"] == zero_shot_accuracy("WorldScenes-Invert")      # the same test images and template
    assert abs(r["room"] - 100 * (r["probe_fewshot"] - r["zero_shot"])) < 1e-9
    assert r["room"] >= 15 and r["probe_full"] >= r["probe_fewshot"] - 0.05
    assert (tmp_path / "room.md").read_text().startswith("| dataset |")


def test_room_command_names_an_unknown_dataset():
    out = subprocess.run([sys.executable, "-m", "aple_jax.world.room", "--datasets", "WorldBogus"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.startswith("error: --datasets: unknown world dataset 'WorldBogus'")
