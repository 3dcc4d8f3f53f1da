"""CoCoOp: CoOp context (4 tokens, "a photo of a") plus the meta-net Linear(512, 32)-ReLU-Linear(32, 512).

Source recipe: CoOp repo `configs/trainers/CoCoOp/vit_b16_c4_ep10_batch1_ctxv1.yaml` (batch 1, SGD lr 0.002,
10 epochs). Our step batches images with vmap, so `--config.batch_size` larger than 1 pays (see docs/performance.md).
`cocoop.prompts_per_pass`: the B x C prompts of a batch go through the text tower at most this many at a time,
each pass recomputed in the backward pass, so memory stays that of one pass at any batch size and class count
(4.2 GB at C = 1000, batch 4, on ViT-B/16 in fp32: docs/performance.md); smaller batches take one pass and pay
nothing. Results do not depend on it.
Run: python launch.py --config configs/cocoop.py:dataset=OxfordPets,seed=1,weights=/path/ViT-B-16 --workdir DIR
"""
import ml_collections

from configs import common
from configs.coop import coop_base


def get_config(arg=None):
    c = coop_base("cocoop")
    c.optim.epochs = 10
    c.batch_size = 1
    c.cocoop = ml_collections.ConfigDict({"prompts_per_pass": 512})
    return common.apply_args(c, arg)
