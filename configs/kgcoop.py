"""KgCoOp: CoOp prompts plus 8 x (1 - mean cosine) between prompted and hand-crafted class text features.

Source recipe: KgCoOp repo `configs/trainers/KgCoOp/vit_b16_ep100_ctxv1.yaml` (4 tokens from "a photo of a",
batch 128, SGD lr 0.002, 100 epochs, W = 8.0, teacher = the dataset's CUSTOM_TEMPLATES prompt).
Run: python launch.py --config configs/kgcoop.py:dataset=OxfordPets,seed=1,weights=/path/ViT-B-16 --workdir DIR
"""
from configs import common
from configs.coop import coop_base


def get_config(arg=None):
    c = coop_base("kgcoop")
    c.optim.epochs = 100
    c.batch_size = 128
    c.loss_weights.text_cos = 8.0
    c.teacher.update(templates="dataset", ensemble="normalized_mean")
    return common.apply_args(c, arg)
