"""Names a federated run is known by: its algorithm label and its server-state file (light to import)."""

from __future__ import annotations

from omegaconf import DictConfig

SERVER_STATE = "server_state.pt"  # <checkpoint_dir>/<run_id>/server_state.pt, written after every round


def algorithm_label(fed: DictConfig) -> str:
    """What a report calls the run: ``centralized``, the strategy, or ``{strategy}+{personal}``; ``+sparse``
    appended under row-sparse aggregation (``federated.sparse_embeddings``), so reports keep both apart.
    ``federated.label`` names the run in place of the strategy and ``personal``: a study's arms of one strategy
    (PAGE's two action maps, its random-action control) each get their own report row (``+sparse`` still
    follows, so one multirun can sweep row-sparse aggregation over labelled arms)."""
    sparse = "+sparse" if fed.get("sparse_embeddings") is True else ""
    if fed.get("label"):
        return f"{fed.label}{sparse}"
    if fed.get("centralized"):
        return f"centralized{sparse}"
    personal = str(fed.get("personal", "none"))
    return (str(fed.name) if personal == "none" else f"{fed.name}+{personal}") + sparse
