"""The columns of a scored row: ``domain`` and one ``p_<task>`` per task (what every scoring path writes)."""

from __future__ import annotations

DOMAIN_COLUMN = "domain"


def probability_column(task: str) -> str:
    return f"p_{task}"
