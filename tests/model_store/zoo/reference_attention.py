"""Straightforward attention modules written from the seed articles' formulas.

Independent of ``model_store.zoo.layers`` on purpose: loops and plain ops, no shared code, so a
test that compares the two checks the math, not a copy of it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def se_reference(x: torch.Tensor, w1, b1, w2, b2) -> torch.Tensor:
    squeeze = x.mean(dim=(2, 3))  # global average pooling, (N, C)
    excitation = torch.sigmoid(F.linear(torch.relu(F.linear(squeeze, w1, b1)), w2, b2))
    return x * excitation[:, :, None, None]


def eca_reference(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    n, c = x.shape[:2]
    k = kernel.numel()
    pad = (k - 1) // 2
    pooled = x.mean(dim=(2, 3))
    weights = torch.zeros(n, c, dtype=x.dtype)
    for channel in range(c):  # 1-D conv over the channel axis, zero padded
        for tap in range(k):
            source = channel + tap - pad
            if 0 <= source < c:
                weights[:, channel] += kernel[tap] * pooled[:, source]
    return x * torch.sigmoid(weights)[:, :, None, None]


def cbam_reference(x, fc1_w, fc1_b, fc2_w, fc2_b, conv_w, bn_scale, bn_shift) -> torch.Tensor:
    def mlp(v):
        return F.linear(torch.relu(F.linear(v, fc1_w, fc1_b)), fc2_w, fc2_b)

    channel_att = torch.sigmoid(mlp(x.mean(dim=(2, 3))) + mlp(x.amax(dim=(2, 3))))
    x = x * channel_att[:, :, None, None]
    spatial_in = torch.cat([x.max(dim=1, keepdim=True).values, x.mean(dim=1, keepdim=True)], dim=1)
    spatial = F.conv2d(spatial_in, conv_w, padding=conv_w.shape[-1] // 2) * bn_scale + bn_shift
    return x * torch.sigmoid(spatial)


def sa_reference(
    x, groups, cweight, cbias, sweight, sbias, gn_weight, gn_bias, eps=1e-5
) -> torch.Tensor:
    c = x.shape[1]
    per_group = c // groups
    half = per_group // 2
    out = torch.empty_like(x)
    for g in range(groups):
        chunk = x[:, g * per_group : (g + 1) * per_group]
        xc, xs = chunk[:, :half], chunk[:, half:]
        gate_c = torch.sigmoid(
            cweight.view(1, half, 1, 1) * xc.mean(dim=(2, 3), keepdim=True)
            + cbias.view(1, half, 1, 1)
        )
        # GroupNorm with one channel per group = per-channel instance norm.
        mu = xs.mean(dim=(2, 3), keepdim=True)
        var = xs.var(dim=(2, 3), unbiased=False, keepdim=True)
        xs_norm = (xs - mu) / torch.sqrt(var + eps) * gn_weight.view(1, half, 1, 1) + gn_bias.view(
            1, half, 1, 1
        )
        gate_s = torch.sigmoid(sweight.view(1, half, 1, 1) * xs_norm + sbias.view(1, half, 1, 1))
        out[:, g * per_group : (g + 1) * per_group] = torch.cat([xc * gate_c, xs * gate_s], dim=1)
    # channel shuffle, 2 groups: output channel 2i takes i, 2i+1 takes c/2 + i
    shuffled = torch.empty_like(out)
    shuffled[:, 0::2] = out[:, : c // 2]
    shuffled[:, 1::2] = out[:, c // 2 :]
    return shuffled
