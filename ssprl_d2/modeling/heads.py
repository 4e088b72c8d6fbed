"""Projection heads (every pre-trainer), prototypes and the cross-scale learner g_phi (SS-PRL),
and DINO's head (local-global)."""
from typing import Sequence

import torch
import torch.nn.functional as F
from detectron2.layers import NaiveSyncBatchNorm
from torch import nn

__all__ = [
    "ProjectionHead",
    "Prototypes",
    "CrossScaleLearner",
    "DINOHead",
    "WeightNormLinear",
    "build_norm_1d",
]


class _NaiveSyncBatchNorm1d(NaiveSyncBatchNorm):
    """Detectron2's NaiveSyncBatchNorm (4-D only) applied to (N, C) features; works with gloo."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x[:, :, None, None])[:, :, 0, 0]


def build_norm_1d(norm: str, channels: int) -> nn.Module:
    """A batch norm for (N, C) features, named as ``MODEL.RESNETS.NORM``.

    Args:
        norm: "BN", "SyncBN" (torch SyncBatchNorm, needs CUDA), "naiveSyncBN" (any backend) or
            "" (no norm, as MoCo v2's head).
        channels: C.

    Returns:
        the norm module (an identity for "").
    """
    if norm == "":
        return nn.Identity()
    if norm == "BN":
        return nn.BatchNorm1d(channels)
    if norm == "SyncBN":
        return nn.SyncBatchNorm(channels)
    if norm == "naiveSyncBN":
        return _NaiveSyncBatchNorm1d(channels)
    raise ValueError(
        f"Unknown head norm {norm!r}; expected 'BN', 'SyncBN', 'naiveSyncBN' or ''"
    )


class ProjectionHead(nn.Module):
    """Linear - norm - ReLU - Linear, output L2-normalised (SS-PRL's z of Eq. 1, MLS's z)."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, norm: str = "BN"):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(in_dim, hidden_dim),
            build_norm_1d(norm, hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, out_dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x: (N, in_dim) pooled trunk features. Returns: (N, out_dim), unit rows."""
        return F.normalize(self.mlp(x), dim=1, p=2)


class Prototypes(nn.Module):
    """K prototype vectors C (rows of a bias-free linear map); scores are z^T C."""

    def __init__(self, dim: int, num_prototypes: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_prototypes, dim))
        nn.init.kaiming_uniform_(self.weight, a=5**0.5)  # nn.Linear's default init
        self.normalize_()

    @property
    def num_prototypes(self) -> int:
        return self.weight.shape[0]

    @torch.no_grad()
    def normalize_(self) -> None:
        """L2-normalise every prototype in place (done before every iteration, as in SwAV)."""
        self.weight.copy_(F.normalize(self.weight, dim=1, p=2))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Args: z: (N, D) unit vectors. Returns: (N, K) scores z^T C."""
        return z @ self.weight.t()


class CrossScaleLearner(nn.Module):
    """g_phi,s: maps a pooled scale-s prototype vector onto the K_0 scale-0 prototypes (Eq. 3).

    As in the release: a bias-free linear map with row-normalised weights applied to an
    L2-normalised input, so its outputs are cosine similarities; the caller divides by tau.
    """

    def __init__(self, in_prototypes: int, out_prototypes: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_prototypes, in_prototypes))
        nn.init.kaiming_uniform_(self.weight, a=5**0.5)
        self.normalize_()

    @torch.no_grad()
    def normalize_(self) -> None:
        """L2-normalise the rows in place (kept with the prototypes' normalisation)."""
        self.weight.copy_(F.normalize(self.weight, dim=1, p=2))

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        """Args: pooled: (B, K_s) mu(P_s). Returns: (B, K_0) cosine scores."""
        return F.normalize(pooled, dim=1, p=2) @ self.weight.t()


def unique_modules(modules: Sequence[nn.Module]) -> list:
    """The distinct modules of a sequence, in order (prototypes may be shared across scales)."""
    seen, out = set(), []
    for m in modules:
        if id(m) not in seen:
            seen.add(id(m))
            out.append(m)
    return out


class WeightNormLinear(nn.Module):
    """Bias-free linear layer with weight normalisation: W = g * V / ||V|| row-wise (DINO).

    With ``learn_gain`` False, g is fixed to 1 (DINO's ``norm_last_layer``, which it recommends
    for ViT-S stability): the output is x V^T with every row of V normalised.
    """

    def __init__(self, in_dim: int, out_dim: int, learn_gain: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_dim, in_dim))
        nn.init.trunc_normal_(self.weight, std=0.02)
        self.gain = nn.Parameter(torch.ones(out_dim, 1), requires_grad=learn_gain)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.gain * F.normalize(self.weight, dim=1))


class DINOHead(nn.Module):
    """DINO's projection head: 3-layer MLP (GELU), L2-normalised bottleneck, weight-normed output.

    Applied token-wise, so one head serves the CLS token and the patch tokens.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        norm_last_layer: bool = True,
    ):
        """
        Args:
            in_dim: trunk width (384 for ViT-S).
            out_dim: K, the number of output dimensions the softmax runs over.
            hidden_dim, bottleneck_dim: MLP widths (DINO: 2048, 256).
            norm_last_layer: fix the last layer's weight-norm gain to 1.
        """
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(in_dim, hidden_dim),
            nn.GELU(),
            nn.Linear(hidden_dim, hidden_dim),
            nn.GELU(),
            nn.Linear(hidden_dim, bottleneck_dim),
        )
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        self.last_layer = WeightNormLinear(bottleneck_dim, out_dim, learn_gain=not norm_last_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., in_dim) tokens -> (..., out_dim) logits."""
        x = F.normalize(self.mlp(x), dim=-1, p=2)
        return self.last_layer(x)
