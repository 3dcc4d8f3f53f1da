"""APLe: independent deep V-L prompts + Gaussian-filter image adapter, trained token-wise in sequence.

Stage I (token-wise knowledge training): one modality at a time, CE + lambda * KL(zero-shot CLIP || prompted).
Stage II (multi-modal token adaptation): both modalities together, CE. Every choice the paper leaves open is a
config value; docs/aple.md says which defaults are the paper's and which are ours.
"""
from __future__ import annotations

from aple_jax.methods.base import MODALITIES, Method, Phase, loss_weights

ORDERS = {"LV": ("text", "vision"), "VL": ("vision", "text")}
GRANULARITIES = ("modality", "token")
UNTRAINED_MODALITY = ("absent", "frozen_init")   # stage1.untrained_modality
TRAINED_MODALITY = ("frozen", "absent")          # stage1.trained_modality
STAGE2_LOSSES = ("ce", "ce_kl")
SHORT = {"text": "L", "vision": "V"}


class APLe(Method):
    name = "aple"

    def phases(self) -> list[Phase]:
        s1, s2, lr = self.config.stage1, self.config.stage2, self.config.optim.lr
        if s1.order not in ORDERS:
            raise ValueError(f"stage1.order={s1.order!r}; expected one of {sorted(ORDERS)}")
        first, second = ORDERS[s1.order]
        stage1_losses = loss_weights({"ce": 1.0, "kl": s1.kl_weight, "l1_text": s1.feature_l1[0],
                                      "l1_image": s1.feature_l1[1]})
        phases = []
        for modality in (first, second):
            present = self._present_in_stage1(modality, trained_before=modality == second)
            for name, selectors in self._selectors(modality, s1.granularity):
                phases.append(Phase(name, selectors, s1.epochs, lr, present, stage1_losses))
        if self.config.stage2.enabled:
            stage2_losses = {"ce": (("ce", 1.0),), "ce_kl": stage1_losses}
            if s2.loss not in stage2_losses:
                raise ValueError(f"stage2.loss={s2.loss!r}; expected one of {sorted(stage2_losses)}")
            phases.append(Phase("LV", ("text/.*", "vision/.*"), s2.epochs, lr, MODALITIES, stage2_losses[s2.loss]))
        return phases

    def _present_in_stage1(self, modality: str, trained_before: bool) -> tuple[str, ...]:
        """The modalities whose prompts enter the towers while `modality` trains in Stage I."""
        s1 = self.config.stage1
        other = "vision" if modality == "text" else "text"
        if trained_before:   # the other modality has been trained already: frozen or absent
            keep = {"frozen": True, "absent": False}[_check(s1.trained_modality, TRAINED_MODALITY,
                                                            "stage1.trained_modality")]
        else:                # the other modality is still at its initialisation: absent or frozen there
            keep = {"frozen_init": True, "absent": False}[_check(s1.untrained_modality, UNTRAINED_MODALITY,
                                                                 "stage1.untrained_modality")]
        return (modality, other) if keep else (modality,)

    def _selectors(self, modality: str, granularity: str) -> list[tuple[str, tuple[str, ...]]]:
        """(phase name, selectors): the whole modality, or one phase per token row of its prompts."""
        _check(granularity, GRANULARITIES, "stage1.granularity")
        pattern = f"{modality}/.*"
        if granularity == "modality":
            return [(SHORT[modality], (pattern,))]
        n_ctx = self.text_n_ctx if modality == "text" else self.vision_n_ctx
        return [(f"{SHORT[modality]}{t}", (f"{pattern}[{t}]",)) for t in range(n_ctx)]


def _check(value: str, options: tuple[str, ...], key: str) -> str:
    if value not in options:
        raise ValueError(f"{key}={value!r}; expected one of {options}")
    return value
