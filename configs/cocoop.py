"""CoCoOp: CoOp context (4 tokens, "a photo of a") plus the meta-net Linear(512, 32)-ReLU-Linear(32, 512).

Source recipe: CoOp repo `configs/trainers/CoCoOp/vit_b16_c4_ep10_batch1_ctxv1.yaml` (batch 1, SGD lr 0.002,
10 epochs). Our step batches images with vmap, so `--config.batch_size` larger than 1 pays (see docs/performance.md).
`cocoop.class_chunk`: classes per text-tower pass (0: all at once). The text tower sees batch x chunk prompts at a
time and each chunk is recomputed in the backward pass, so memory is bounded at any C (ImageNet's 1000 classes at
batch 4); class sets of at most 256 take the unchunked path and pay nothing. Results do not depend on it.
Run: python launch.py --config configs/cocoop.py:dataset=OxfordPets,seed=1,weights=/path/ViT-B-16 --workdir DIR
"""
import ml_collections

from configs import common
from configs.coop import coop_base


def get_config(arg=None):
    c = coop_base("cocoop")
    c.optim.epochs = 10
    c.batch_size = 1
    c.cocoop = ml_collections.ConfigDict({"class_chunk": 256})
    return common.apply_args(c, arg)
