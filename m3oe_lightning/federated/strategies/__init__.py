"""Server-side algorithms (``conf/federated/*.yaml`` ↔ these classes; each YAML setting is a constructor
parameter of the same name)."""

from m3oe_lightning.federated.strategies.base import Strategy
from m3oe_lightning.federated.strategies.ditto import Ditto
from m3oe_lightning.federated.strategies.fedavg import FedAvg
from m3oe_lightning.federated.strategies.fedprox import FedProx
from m3oe_lightning.federated.strategies.local import Local
from m3oe_lightning.federated.strategies.page import PAGE

__all__ = ["PAGE", "Ditto", "FedAvg", "FedProx", "Local", "Strategy"]
