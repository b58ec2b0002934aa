"""Models: every one is an ``nn.Module`` built from a FeatureSchema, ``forward(batch) -> logits [B, T]``.

Each model ``m3oe_lightning/models/<name>.py`` has a config ``conf/model/<name>.yaml``;
:class:`SplitByGroup` (``conf/model/split.yaml``) trains any of them separately per domain / task.
"""

from m3oe_lightning.models.adatt import AdaTT
from m3oe_lightning.models.base import MDMTModel
from m3oe_lightning.models.m2m import M2M
from m3oe_lightning.models.m3oe import M3oE
from m3oe_lightning.models.mlp import MLP
from m3oe_lightning.models.mmoe import MMoE
from m3oe_lightning.models.ple import PLE
from m3oe_lightning.models.shared_bottom import SharedBottom
from m3oe_lightning.models.split import SplitByGroup
from m3oe_lightning.models.star import STAR

__all__ = ["MDMTModel", "M3oE", "MLP", "SharedBottom", "MMoE", "PLE", "AdaTT", "STAR", "M2M", "SplitByGroup"]
