"""Torch stand-ins for the tests that read or write official PyTorch files (import only after importorskip)."""
import torch


class StateDictModule(torch.nn.Module):
    """A module whose state_dict has exactly the given names, shapes and values: floating tensors as frozen
    parameters, the rest as buffers (stands in for an official model, or for OpenAI's TorchScript file)."""

    def __init__(self, sd: dict[str, torch.Tensor]):
        super().__init__()
        for name, t in sd.items():
            mod = self
            *parents, leaf = name.split(".")
            for p in parents:
                if not hasattr(mod, p):
                    mod.add_module(p, torch.nn.Module())
                mod = getattr(mod, p)
            if t.is_floating_point():
                mod.register_parameter(leaf, torch.nn.Parameter(t, requires_grad=False))
            else:
                mod.register_buffer(leaf, t)
