"""Models: every one is an ``nn.Module`` built from a FeatureSchema, ``forward(batch) -> logits [B, T]``."""

from m3oe_lightning.models.base import MDMTModel
from m3oe_lightning.models.m3oe import M3oE

__all__ = ["MDMTModel", "M3oE"]
