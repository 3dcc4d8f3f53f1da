"""MaPLe: 2 deep language tokens at depth 9 coupled to the vision tower by 512->768 linear maps.

Source recipe: MaPLe repo `configs/trainers/MaPLe/vit_b16_c2_ep5_batch4_2ctx.yaml` (n_ctx 2, "a photo of a" with
only the first 2 slots learned, depth 9, SGD lr 0.0035, 5 epochs, batch 4). `:xd` / `:dg` use
`vit_b16_c2_ep5_batch4_2ctx_cross_datasets.yaml` (depth 3, lr 0.0026, 2 epochs) on ImageNet.
Run: python launch.py --config configs/maple.py:dataset=OxfordPets,seed=1,weights=/path/ViT-B-16 --workdir DIR
"""
from configs import common


def get_config(arg=None):
    c = common.base_config("maple")
    c.prompts.text.update(n_ctx=2, depth=9, init="a photo of a")
    c.prompts.vision.depth = 0
    c.optim.update(lr=0.0035, epochs=5)
    c = common.apply_args(c, arg)
    if c.setting == "transfer":
        c.prompts.text.depth = 3
        c.optim.update(lr=0.0026, epochs=2)
    return c
