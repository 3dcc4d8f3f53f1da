"""MMA: bottleneck adapters (dim 32, scale 0.001) on blocks 5-12 of both towers with a per-block projection shared
between them, CE on "a photo of a {class}."; no prompt tokens.

Source recipe: ZjjConan/Multi-Modal-Adapter `configs/trainers/MultiModalAdapter/vit_b16_ep5.yaml` (SGD lr 0.0015,
5 epochs, batch 16, cosine, no warm-up; ADAPTER_START 5, ADAPTER_END 12, ADAPTER_DIM 32, ADAPTER_SCALE 0.001,
TEXT_CTX_INIT "a photo of a"; Dassl's SGD defaults momentum 0.9, weight decay 5e-4) and `vit_b16_ep5_imnet.yaml`
(the same with batch 128, used for ImageNet by `run_examples.sh`).
Run: python launch.py --config configs/mma.py:dataset=OxfordPets,seed=1,weights=/path/ViT-B-16 --workdir DIR
"""
from configs import common


def get_config(arg=None):
    c = common.base_config("mma")
    c.mma = dict(start=5, end=12, dim=32, scale=0.001, text_prefix="a photo of a")
    c.optim.update(lr=0.0015, epochs=5, warmup_epochs=0)
    c.batch_size = 16
    c = common.apply_args(c, arg)
    if c.dataset.name == "ImageNet":
        c.batch_size = 128
    a = common.parse_arg(arg, **common.COMMON_ARGS)
    if a.tiny:
        c.mma.update(start=1, end=2)   # the tiny CLIP's two blocks
    if a.world or a.demo:
        # The world CLIP's last 3 of 4 blocks, as ViT-B's last 8 of 12; the adapters at full size (scale 1): at 0.001
        # they leave the world CLIP's features where they were (base accuracy = zero-shot's, docs/world.md).
        c.mma.update(start=2, end=4, scale=1.0)
    return c
