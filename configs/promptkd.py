"""PromptKD: a student CLIP with deep vision prompts and a projector, distilled by KL from a larger CLIP's teacher
on the unlabeled training images of every class (transductive); no CE, no labels, no text tower of its own.

Source recipe: zhengli97/PromptKD `configs/trainers/PromptKD/vit_b16_c2_ep20_batch8_4+4ctx.yaml` and
`scripts/promptkd/base2new_train.sh`: vision prompts 4 tokens at depth 9, SGD lr 0.005, 20 epochs, batch 8, cosine
after one constant warm-up epoch at 1e-5, Dassl's weight decay 5e-4, `DATASET.NUM_SHOTS 0` (every training image),
temperature 1, KD weight 1000 (200 on FGVCAircraft, Flowers102, DTD: set loss_weights.kd), `TEST.FINAL_MODEL
best_val` (kd.select=best_base: the epoch with the best base-class test accuracy; `last` for the last epoch).
Teacher (official): PromptSRC on ViT-L/14 (`PromptSRC/vit_l14_c2_ep20_batch8_4+4ctx.yaml`), one per dataset.

kd.teacher: a finished run directory of ours (any cosine-logit method on a larger CLIP) or an official
`model-best.pth.tar` (then kd.teacher_config names its method and CLIP); empty: kd.teacher_config is trained on the
run's dataset into <workdir>/teacher first. `:world` / `:demo`: the teacher is PromptSRC on the larger world CLIP
(`world-large`, vision prompts in 6 of its 8 blocks), the student the shipped world CLIP, on WorldScenes-Tint.
Run: python launch.py --config configs/promptkd.py:demo --workdir DIR
     python launch.py --config configs/promptkd.py:dataset=OxfordPets,seed=1,weights=/path/ViT-B-16,\
teacher=/path/teacher/model-best.pth.tar --config.kd.teacher_config=configs/promptsrc.py:backbone=ViT-L/14,\
weights=/path/ViT-L-14 --workdir DIR
"""
from configs import common

WORLD_TEACHER = "configs/promptsrc.py:world,backbone=world-large"
WORLD_DATASET = "world:WorldScenes-Tint"   # room to learn on base and new classes (docs/world.md)
TINY_TEACHER = "configs/ivlp.py:tiny"      # tests: the same random tiny CLIP, trained with labels


def get_config(arg=None):
    c = common.base_config("promptkd")
    c.prompts.text.depth = 0                  # the student has no text tower: class features are the teacher's
    c.prompts.vision.update(n_ctx=4, depth=9, init_std=0.02)
    c.optim.update(lr=0.005, epochs=20)
    c.batch_size = 8
    c.dataset.shots = 0
    c.loss_weights = dict(kd=1000.0)
    c.teacher.images = "cached"               # the teacher's image features of each training image, once
    c.kd = dict(teacher="", teacher_config="", temperature=1.0, select="best_base")
    extra = dict(teacher="")
    c = common.apply_args(c, arg, **extra)
    a = common.parse_arg(arg, **common.COMMON_ARGS, **extra)
    c.kd.teacher = a.teacher
    if a.world or a.demo:
        c.kd.teacher_config = WORLD_TEACHER
        if not a.dataset:
            c.dataset.name = WORLD_DATASET
    if a.tiny:
        c.kd.teacher_config = TINY_TEACHER
        c.loss_weights.kd = 1.0
    return c
