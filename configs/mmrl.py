"""MMRL: 5 representation tokens (width 512) projected into both towers from block 6 on, a second image feature
pooled from them, CE on class and representation logits (0.7 / 0.3) plus cosine regularisers towards frozen CLIP
with a per-dataset weight; fused logits on the training classes, class logits elsewhere.

Source recipe: yunncheng/MMRL `configs/trainers/MMRL/vit_b16.yaml` (base-to-novel: AdamW lr 0.001, 10 epochs,
batch 4, cosine per epoch after one constant warm-up epoch at 1e-5, RandomResizedCrop scale (0.5, 1) + flip; ALPHA
0.7, REG_WEIGHT 1.0, N_REP_TOKENS 5, REP_LAYERS [6..12], REP_DIM 512; Dassl's AdamW defaults weight decay 5e-4,
betas (0.9, 0.999)), `vit_b16_imagenet.yaml` (ImageNet: batch 32, 5 epochs; `base2new_train.sh` and `few_shot.sh`
pick it for ImageNet), `vit_b16_few_shot.yaml` (`:fewshot`: batch 32, 50 epochs, REG_WEIGHT 0.5),
`vit_b16_cross_datasets.yaml` (`:xd` / `:dg`: batch 32, 1 epoch, no warm-up, REG_WEIGHT 0.2) and
`trainers/config.py` (the per-dataset table below, merged after the config file in every task, so it wins over the
few-shot and cross-dataset REG_WEIGHT for the 11 datasets; EuroSAT also takes REP_DIM 2048).
Run: python launch.py --config configs/mmrl.py:dataset=OxfordPets,seed=1,weights=/path/ViT-B-16 --workdir DIR
"""
from configs import common
from aple_jax.data.errors import UnknownDatasetError
from aple_jax.data.names import canonical_name

# trainers/config.py `get_dataset_specified_config(..., "MMRL", task)`: the same for B2N, FS and CD.
REG_WEIGHT = {"StanfordCars": 7.0, "FGVCAircraft": 6.0, "SUN397": 6.0, "DescribableTextures": 6.0, "Food101": 5.0,
              "OxfordFlowers": 4.0, "UCF101": 3.0, "ImageNet": 0.5, "Caltech101": 0.5, "OxfordPets": 0.2,
              "EuroSAT": 0.01}
REP_DIM = {"EuroSAT": 2048}
# MMRL++ (`:plus`): the same file's (BETA, REG_WEIGHT) for B2N and FS, and ImageNet's as the cross-dataset source.
PLUS_TABLE = {"ImageNet": (0.9, 0.2), "FGVCAircraft": (0.9, 2.0), "UCF101": (0.9, 3.0),
              "DescribableTextures": (0.9, 7.0), "OxfordPets": (0.7, 0.01), "StanfordCars": (0.7, 6.0),
              "Caltech101": (0.6, 3.0), "SUN397": (0.5, 3.0), "OxfordFlowers": (0.4, 7.0), "EuroSAT": (0.2, 0.01),
              "Food101": (0.1, 1.0)}
PLUS_TRANSFER_SOURCE = {"ImageNet": (0.9, 0.1)}


def _dataset(name: str) -> str:
    """CoOp's name of the dataset, or "" for one outside the tables (world, tfds, custom)."""
    try:
        return canonical_name(name)
    except UnknownDatasetError:
        return ""


def get_config(arg=None):
    c = common.base_config("mmrl")
    # beta, res_rank, proj_rank: MMRL++ only (plus=True, the config argument `plus`).
    c.mmrl = dict(n_tokens=5, rep_dim=512, start=6, alpha=0.7, reg_weight=1.0, plus=False, beta=0.9, res_rank=4,
                  proj_rank=64)
    c.optim.update(name="adamw", lr=1e-3, epochs=10, weight_decay=5e-4, betas=(0.9, 0.999), warmup_epochs=1,
                   warmup_lr=1e-5)
    c.dataset.crop_scale = (0.5, 1.0)
    c.batch_size = 4
    c = common.apply_args(c, arg, plus=False)
    a = common.parse_arg(arg, **common.COMMON_ARGS, plus=False)
    c.mmrl.plus = a.plus
    if a.plus:
        c.tag = c.tag or "plus"   # report rows: mmrl (plus)
    if a.tiny:
        c.mmrl.start = 1        # both blocks of the tiny CLIP: the replacement before a later block is exercised
        c.optim.lr = 5e-3       # the preset's SGD rate is too large for Adam
        return c
    if c.setting == "transfer":                      # vit_b16_cross_datasets.yaml
        c.optim.update(epochs=1, warmup_epochs=0)
        c.batch_size, c.mmrl.reg_weight = 32, 0.2
    elif c.setting == "all":                         # vit_b16_few_shot.yaml
        c.optim.epochs, c.batch_size, c.mmrl.reg_weight = 50, 32, 0.5
    name = _dataset(c.dataset.name)
    if name == "ImageNet" and c.setting != "transfer":   # vit_b16_imagenet.yaml
        c.optim.epochs, c.batch_size, c.mmrl.reg_weight = 5, 32, 1.0
    if a.plus:
        if c.setting == "all" and name != "ImageNet":    # MMRLpp/vit_b16_few_shot.yaml
            c.optim.update(lr=2e-3, epochs=100)
            c.mmrl.reg_weight = 1.0
        table = PLUS_TRANSFER_SOURCE if c.setting == "transfer" else PLUS_TABLE
        c.mmrl.beta, c.mmrl.reg_weight = table.get(name, (c.mmrl.beta, c.mmrl.reg_weight))
    else:
        c.mmrl.reg_weight = REG_WEIGHT.get(name, c.mmrl.reg_weight)
        c.mmrl.rep_dim = REP_DIM.get(name, c.mmrl.rep_dim)
    if a.world or a.demo:
        # The world CLIP's blocks 3-4 of 4: ViT-B's 6-12 start at its middle and hold 7 of 12 blocks (2.3 of 4).
        c.mmrl.start = 3
    return c
