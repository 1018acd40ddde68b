"""The torch modules that ops compile to, where torch has none of its own."""
from __future__ import annotations

import torch
from torch import nn


class ReLU(nn.Module):
    """ReLU whose gradient at exactly 0 is 1 (a valid subgradient; forward unchanged).

    A dead unit (zero weights and bias) sits at exactly 0: with PyTorch's choice of
    0 there, it would never see a gradient, and the inverse scale space could never
    switch it on. Passing the gradient at 0 lets Bregman iterations grow units from zero.
    """

    def forward(self, x):
        if self.training:
            return torch.where(x >= 0, x, 0.0)
        return torch.relu(x)


class ReLU6(nn.Module):
    """ReLU6 whose gradient at exactly 0 is 1, for the same reason as :class:`ReLU`."""

    def forward(self, x):
        if self.training:
            return torch.where(x >= 0, x.clamp(max=6.0), 0.0)
        return nn.functional.relu6(x)


class GELUTanh(nn.GELU):
    """GELU by its tanh approximation (GPT-2's)."""

    def __init__(self):
        super().__init__(approximate="tanh")


F = nn.functional
# The activations, declared once: name -> (the module it compiles to, torch's module class
# and functions that the fx importer reads as it). leaky_relu: torch's slope 0.01 only.
ACTIVATIONS = {
    "relu": (ReLU, nn.ReLU, (torch.relu, F.relu)),
    "gelu": (nn.GELU, nn.GELU, (F.gelu,)),
    "gelu_tanh": (GELUTanh, None, ()),
    "tanh": (nn.Tanh, nn.Tanh, (torch.tanh, F.tanh)),
    "sigmoid": (nn.Sigmoid, nn.Sigmoid, (torch.sigmoid, F.sigmoid)),
    "identity": (nn.Identity, nn.Identity, ()),
    "relu6": (ReLU6, nn.ReLU6, (F.relu6,)),
    "silu": (nn.SiLU, nn.SiLU, (F.silu,)),
    "hardswish": (nn.Hardswish, nn.Hardswish, (F.hardswish,)),
    "hardsigmoid": (nn.Hardsigmoid, nn.Hardsigmoid, (F.hardsigmoid,)),
    "leaky_relu": (nn.LeakyReLU, None, ()),
}
ACT_MODULES = {name: compiled for name, (compiled, _, _) in ACTIVATIONS.items()}


class GlobalAvgPool(nn.Module):
    def forward(self, x):
        return x.mean(dim=(2, 3))


class ResponseNorm(nn.Module):
    """ConvNeXt-V2's global response norm over (N, C, H, W): ``x + bias + weight * x *
    n`` with ``n`` a channel's L2 norm over the image divided by the mean of those norms,
    a mean over ``count`` channels (the supernet's: a removed channel was exactly 0, so
    the compact model divides by the same count)."""

    def __init__(self, channels: int, count: int, eps: float):
        super().__init__()
        self.count, self.eps = count, eps
        self.weight = nn.Parameter(torch.zeros(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x):
        g = x.norm(p=2, dim=(2, 3), keepdim=True)
        n = g / (g.sum(1, keepdim=True) / self.count + self.eps)
        return x + torch.addcmul(self.bias[:, None, None], self.weight[:, None, None], x * n)


class ChannelScale(nn.Module):
    """``x * weight`` per channel (dim 1): a layer scale."""

    def __init__(self, channels: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))

    def forward(self, x):
        return x * self.weight.view(-1, *([1] * (x.dim() - 2)))


class MulConst(nn.Module):
    """``x * factor``, a number (an average of two heads: ``(a + b) / 2``)."""

    def __init__(self, factor: float):
        super().__init__()
        self.factor = factor

    def forward(self, x):
        return x * self.factor


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channels (dim 1) of (N, C), (N, C, L) tokens or (N, C, H, W)
    tensors; computed as ConvNeXt and ViT compute it (channels last, layer_norm, back)."""

    def __init__(self, channels: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x):
        shape = self.weight.shape
        if x.dim() == 2:
            return nn.functional.layer_norm(x, shape, self.weight, self.bias, self.eps)
        last, back = ((0, 2, 1), (0, 2, 1)) if x.dim() == 3 else ((0, 2, 3, 1), (0, 3, 1, 2))
        x = nn.functional.layer_norm(x.permute(last), shape, self.weight, self.bias, self.eps)
        return x.permute(back)  # (explicit dims: ONNX's Transpose takes no negative ones)


class ChannelRMSNorm(nn.Module):
    """RMS norm over the channels (dim 1), as Llama computes it: ``x / sqrt(mean(x^2) +
    eps) * weight`` (in float32)."""

    def __init__(self, channels: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))

    def forward(self, x):
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(1, keepdim=True) + self.eps)
        w = self.weight.reshape(-1, *[1] * (x.dim() - 2))
        return w * x32.to(x.dtype)


class Linear(nn.Linear):
    """``nn.Linear`` on the features (dim 1) of (N, D) or of (N, D, L) tokens."""

    def forward(self, x):
        if x.dim() == 2:
            return super().forward(x)
        return super().forward(x.transpose(1, 2)).transpose(1, 2)


class ChannelSelect(nn.Module):
    """Output channel j is input channel ``channels[j]`` (dim 1)."""

    def __init__(self, channels):
        super().__init__()
        self.register_buffer("channels", torch.tensor(channels, dtype=torch.long),
                             persistent=False)

    def forward(self, x):
        return x.index_select(1, self.channels)


class StochasticDepth(nn.Module):
    """In training, drops the whole input with probability ``p`` (per sample: ``"row"``,
    or per batch: ``"batch"``) and scales survivors by 1 / (1 - p); identity in eval."""

    def __init__(self, p: float, mode: str):
        super().__init__()
        self.p, self.mode = p, mode

    def forward(self, x):
        if not self.training or self.p == 0:
            return x
        shape = [x.shape[0] if self.mode == "row" else 1] + [1] * (x.dim() - 1)
        keep = torch.empty(shape, dtype=x.dtype, device=x.device).bernoulli_(1 - self.p)
        return x * keep / (1 - self.p) if self.p < 1 else x * keep
