"""Published numbers to compare against, transcribed from the reference protocol.md section 6 (ViT-B/16, 16 shots).

Sources, as protocol.md marks them:
- BASE2NEW_AVERAGE: the 11-dataset averages printed in the repositories' READMEs (MaPLe, PromptSRC, KgCoOp, MMA,
  CoPrompt; TCP and the last four rows from third-party README tables); the source of each row is kept with it.
  As printed there, the RPO and HPT HMs differ from 2BN/(B+N) by about 0.2.
- BASE2NEW_PER_DATASET: recalled from MaPLe Table 1 and the PromptSRC main table, unverified (internally consistent:
  each HM is 2BN/(B+N) and the 11-row means give the README averages, both to 0.01).
- DOMAIN_GENERALIZATION: recalled from the CoCoOp, MaPLe and PromptSRC DG tables, unverified; only the ImageNet-A
  column matches an independent public listing.
No cross-dataset (ImageNet -> 10 targets) numbers are in protocol.md, so none are here.
"""
from __future__ import annotations

PER_DATASET_SOURCE = "recalled from MaPLe Table 1 / PromptSRC main table, unverified"
DG_SOURCE = "recalled from CoCoOp / MaPLe / PromptSRC DG tables, unverified"

# method -> (base, novel, HM, source)
BASE2NEW_AVERAGE: dict[str, tuple[float, float, float, str]] = {
    "CLIP (hand-crafted)": (69.34, 74.22, 71.70, "README: MaPLe, PromptSRC"),
    "CoOp": (82.69, 63.22, 71.66, "README: MaPLe, PromptSRC"),
    "CoCoOp": (80.47, 71.69, 75.83, "README: MaPLe, PromptSRC"),
    "ProDA": (81.56, 72.30, 76.65, "README: MMA"),
    "KgCoOp": (80.73, 73.60, 77.00, "README: KgCoOp, MMA"),
    "ProGrad": (82.48, 70.75, 76.16, "README: KgCoOp"),
    "Deep vision prompting (VPT)": (80.24, 73.43, 76.68, "README: MaPLe"),
    "Deep language prompting": (81.72, 73.81, 77.56, "README: MaPLe"),
    "IVLP 2+2, depth 12": (82.15, 74.07, 77.90, "README: MaPLe"),
    "MaPLe": (82.28, 75.14, 78.55, "README: MaPLe"),
    "IVLP 4+4, depth 9": (84.21, 71.79, 77.51, "README: PromptSRC"),
    "PromptSRC": (84.26, 76.10, 79.97, "README: PromptSRC"),
    "TCP": (84.13, 75.36, 79.51, "third-party README tables (HiCroPL, EvoPrompt)"),
    "MMA": (83.20, 76.80, 79.87, "README: MMA"),
    "CoPrompt": (84.00, 77.23, 80.48, "README: CoPrompt"),
    "RPO": (81.13, 75.00, 77.78, "README: Awesome-Prompt-Learning-for-Vision-Language-Models"),
    "DePT": (83.62, 75.04, 79.10, "README: Awesome-Prompt-Learning-for-Vision-Language-Models"),
    "LASP": (83.18, 76.11, 79.48, "README: Awesome-Prompt-Learning-for-Vision-Language-Models"),
    "HPT": (84.32, 76.86, 80.23, "README: Awesome-Prompt-Learning-for-Vision-Language-Models"),
}

# method -> dataset -> (base, novel, HM)
BASE2NEW_PER_DATASET: dict[str, dict[str, tuple[float, float, float]]] = {
    "CLIP": {
        "ImageNet": (72.43, 68.14, 70.22), "Caltech101": (96.84, 94.00, 95.40),
        "OxfordPets": (91.17, 97.26, 94.12), "StanfordCars": (63.37, 74.89, 68.65),
        "Flowers102": (72.08, 77.80, 74.83), "Food101": (90.10, 91.22, 90.66),
        "FGVCAircraft": (27.19, 36.29, 31.09), "SUN397": (69.36, 75.35, 72.23),
        "DTD": (53.24, 59.90, 56.37), "EuroSAT": (56.48, 64.05, 60.03), "UCF101": (70.53, 77.50, 73.85),
    },
    "CoOp": {
        "ImageNet": (76.47, 67.88, 71.92), "Caltech101": (98.00, 89.81, 93.73),
        "OxfordPets": (93.67, 95.29, 94.47), "StanfordCars": (78.12, 60.40, 68.13),
        "Flowers102": (97.60, 59.67, 74.06), "Food101": (88.33, 82.26, 85.19),
        "FGVCAircraft": (40.44, 22.30, 28.75), "SUN397": (80.60, 65.89, 72.51),
        "DTD": (79.44, 41.18, 54.24), "EuroSAT": (92.19, 54.74, 68.69), "UCF101": (84.69, 56.05, 67.46),
    },
    "CoCoOp": {
        "ImageNet": (75.98, 70.43, 73.10), "Caltech101": (97.96, 93.81, 95.84),
        "OxfordPets": (95.20, 97.69, 96.43), "StanfordCars": (70.49, 73.59, 72.01),
        "Flowers102": (94.87, 71.75, 81.71), "Food101": (90.70, 91.29, 90.99),
        "FGVCAircraft": (33.41, 23.71, 27.74), "SUN397": (79.74, 76.86, 78.27),
        "DTD": (77.01, 56.00, 64.85), "EuroSAT": (87.49, 60.04, 71.21), "UCF101": (82.33, 73.45, 77.64),
    },
    "MaPLe": {
        "ImageNet": (76.66, 70.54, 73.47), "Caltech101": (97.74, 94.36, 96.02),
        "OxfordPets": (95.43, 97.76, 96.58), "StanfordCars": (72.94, 74.00, 73.47),
        "Flowers102": (95.92, 72.46, 82.56), "Food101": (90.71, 92.05, 91.38),
        "FGVCAircraft": (37.44, 35.61, 36.50), "SUN397": (80.82, 78.70, 79.75),
        "DTD": (80.36, 59.18, 68.16), "EuroSAT": (94.07, 73.23, 82.35), "UCF101": (83.00, 78.66, 80.77),
    },
    "PromptSRC": {
        "ImageNet": (77.60, 70.73, 74.01), "Caltech101": (98.10, 94.03, 96.02),
        "OxfordPets": (95.33, 97.30, 96.30), "StanfordCars": (78.27, 74.97, 76.58),
        "Flowers102": (98.07, 76.50, 85.95), "Food101": (90.67, 91.53, 91.10),
        "FGVCAircraft": (42.73, 37.87, 40.15), "SUN397": (82.67, 78.47, 80.52),
        "DTD": (83.37, 62.97, 71.75), "EuroSAT": (92.90, 73.90, 82.32), "UCF101": (87.10, 78.80, 82.74),
    },
}

# method -> target -> accuracy (ImageNet is the source)
DOMAIN_GENERALIZATION: dict[str, dict[str, float]] = {
    "CLIP": {"ImageNet": 66.73, "ImageNetV2": 60.83, "ImageNetSketch": 46.15, "ImageNetA": 47.77,
             "ImageNetR": 73.96},
    "CoOp": {"ImageNet": 71.51, "ImageNetV2": 64.20, "ImageNetSketch": 47.99, "ImageNetA": 49.71,
             "ImageNetR": 75.21},
    "CoCoOp": {"ImageNet": 71.02, "ImageNetV2": 64.07, "ImageNetSketch": 48.75, "ImageNetA": 50.63,
               "ImageNetR": 76.18},
    "MaPLe": {"ImageNet": 70.72, "ImageNetV2": 64.07, "ImageNetSketch": 49.15, "ImageNetA": 50.90,
              "ImageNetR": 76.98},
    "PromptSRC": {"ImageNet": 71.27, "ImageNetV2": 64.35, "ImageNetSketch": 49.55, "ImageNetA": 50.90,
                  "ImageNetR": 77.80},
}
