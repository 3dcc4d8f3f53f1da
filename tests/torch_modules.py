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


class QuickGELU(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class PromptedBlock(torch.nn.Module):
    """OpenAI CLIP's residual attention block; with `n_ctx`, IVLP's vision block (zhengli97/PromptKD `clip/model.py`,
    `ResidualAttentionBlock_IVLP`): its `VPT_shallow` replaces the last `n_ctx` tokens before the block."""

    def __init__(self, width: int, heads: int, n_ctx: int = 0):
        super().__init__()
        self.attn = torch.nn.MultiheadAttention(width, heads)
        self.ln_1 = torch.nn.LayerNorm(width)
        self.mlp = torch.nn.Sequential()
        self.mlp.add_module("c_fc", torch.nn.Linear(width, 4 * width))
        self.mlp.add_module("gelu", QuickGELU())
        self.mlp.add_module("c_proj", torch.nn.Linear(4 * width, width))
        self.ln_2 = torch.nn.LayerNorm(width)
        self.n_ctx = n_ctx
        if n_ctx:
            self.VPT_shallow = torch.nn.Parameter(torch.zeros(n_ctx, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:   # (tokens, batch, width)
        if self.n_ctx:
            x = torch.cat([x[:-self.n_ctx], self.VPT_shallow[:, None].expand(-1, x.shape[1], -1)], 0)
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


class PromptedVisionTransformer(torch.nn.Module):
    """OpenAI CLIP's VisionTransformer as PromptKD's `clip/model.py` builds it for IVLP: `VPT` appended after the
    class and patch tokens (after the positional embedding), deep prompts in blocks 1..depth-1; fp32 (the official
    code casts prompts to fp16 for its fp16 towers)."""

    def __init__(self, width: int, layers: int, heads: int, patch: int, resolution: int, embed: int, n_ctx: int,
                 depth: int):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, width, patch, patch, bias=False)
        self.VPT = torch.nn.Parameter(torch.zeros(n_ctx, width))
        self.class_embedding = torch.nn.Parameter(torch.zeros(width))
        self.positional_embedding = torch.nn.Parameter(torch.zeros((resolution // patch) ** 2 + 1, width))
        self.ln_pre = torch.nn.LayerNorm(width)
        self.transformer = torch.nn.Module()
        self.transformer.resblocks = torch.nn.Sequential(
            *[PromptedBlock(width, heads, n_ctx if 0 < i < depth else 0) for i in range(layers)])
        self.ln_post = torch.nn.LayerNorm(width)
        self.proj = torch.nn.Parameter(torch.zeros(width, embed))

    def forward(self, images: torch.Tensor) -> torch.Tensor:   # (batch, 3, H, W)
        x = self.conv1(images).flatten(2).permute(0, 2, 1)
        x = torch.cat([self.class_embedding.expand(x.shape[0], 1, -1), x], 1) + self.positional_embedding
        x = torch.cat([x, self.VPT.expand(x.shape[0], -1, -1)], 1)
        x = self.transformer.resblocks(self.ln_pre(x).permute(1, 0, 2)).permute(1, 0, 2)
        return self.ln_post(x[:, 0]) @ self.proj


class FeatureTransTwoLayer(torch.nn.Module):
    """PromptKD's `Feature_Trans_Module_two_layer`: 1x1 conv, BatchNorm2d, ReLU, 1x1 conv over (B, C, 1, 1)."""

    def __init__(self, d_in: int, d_out: int):
        super().__init__()
        self.conv1 = torch.nn.Sequential(torch.nn.Conv2d(d_in, d_out, 1), torch.nn.BatchNorm2d(d_out),
                                         torch.nn.ReLU(inplace=True), torch.nn.Conv2d(d_out, d_out, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv1(x[:, :, None, None])[:, :, 0, 0]


class PromptKDStudent(torch.nn.Module):
    """PromptKD's student `CustomCLIP` (`trainers/promptkd.py`): its state_dict is the official student file's."""

    def __init__(self, vision: PromptedVisionTransformer, embed: int, teacher_width: int):
        super().__init__()
        self.image_encoder = vision
        self.logit_scale = torch.nn.Parameter(torch.zeros(()))
        self.VPT_image_trans = FeatureTransTwoLayer(embed, teacher_width)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(L2-normalised projected image features, logit scale), as the official forward."""
        feats = self.VPT_image_trans(self.image_encoder(images))
        return feats / feats.norm(dim=-1, keepdim=True), self.logit_scale.exp()
