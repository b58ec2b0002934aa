"""Our messages ↔ Flower records, at the transport boundary and nowhere else.

Record keys follow Flower's conventions (its FedAvg reads ``"arrays"``, ``"config"`` and weights by
``"num-examples"``); the arrays themselves travel packed into one byte array (:func:`arrays_to_record`).
A client's persistent state (:meth:`~m3oe_lightning.federated.client.MDMTClient.state_dict`)
lives in the ClientApp's ``context.state`` between messages, under :data:`STATE_PREFIX`.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from m3oe_lightning.federated.messages import Arrays, EvaluateIns, EvaluateRes, FitIns, FitRes, Metrics

ARRAYS, CONFIG, METRICS, INFO = "arrays", "config", "metrics", "info"
EMBEDDING_ROWS = "embedding-rows"  # a row-sparse fit reply's updated row ids per table (FitRes.embedding_rows)
NUM_EXAMPLES = "num-examples"
PACKED = "m3oe.packed-state-dict"  # the one array of a packed ArrayRecord (arrays_to_record)
PARTITION_ID = "partition-id"
STATE_PREFIX = "m3oe."  # context.state keys holding MDMTClient.state_dict() entries
SITE = "site"  # a reply's ConfigRecord of what the node measured itself (``seconds``: its compute for the message)

def arrays_to_record(arrays: Mapping[str, Any]) -> ArrayRecord:
    """A state dict → an ``ArrayRecord`` holding it as one packed byte array (dtypes, shapes, values exact).

    Why packed: Flower moves every array of a record as separate objects (an array and its chunks), each
    its own HTTP request at every hop (server → SuperLink → SuperNode → ClientApp and back), two at a time;
    an M3oE state dict of ~50 tensors was ~100 objects and 2–4 s per message on localhost, one packed array
    is 3 objects (experiments/bench/deployment.md). The bytes are ``torch.save``'s; reading them back uses
    ``weights_only=True`` (tensors and plain containers only: nothing a sender packs can run code here).
    """
    buffer = io.BytesIO()
    torch.save({name: value for name, value in arrays.items()}, buffer)
    return ArrayRecord({PACKED: Array(np.frombuffer(buffer.getbuffer(), dtype=np.uint8).copy())})


def record_to_arrays(record: ArrayRecord) -> Arrays:
    """``ArrayRecord`` → a plain state dict of tensors (a packed record, or one array per tensor)."""
    if PACKED in record:
        return dict(torch.load(io.BytesIO(record[PACKED].numpy().tobytes()), weights_only=True))
    return dict(record.to_torch_state_dict())


def _metric_record(metrics: Mapping[str, float], num_examples: int) -> MetricRecord:
    return MetricRecord({**{key: float(value) for key, value in metrics.items()}, NUM_EXAMPLES: int(num_examples)})


def _split_metrics(record: MetricRecord) -> tuple[int, Metrics]:
    values = dict(record)
    if NUM_EXAMPLES not in values:
        raise ValueError(f"reply metrics lack {NUM_EXAMPLES!r}")
    num_examples = int(values.pop(NUM_EXAMPLES))
    return num_examples, {key: float(value) for key, value in values.items()}


def _instruction_content(arrays: Arrays | None, config: Mapping[str, Any]) -> RecordDict:
    content = RecordDict({CONFIG: ConfigRecord(dict(config))})
    if arrays is not None:  # "no model sent" (Local, personal evaluation) is an absent record, not an empty one
        content[ARRAYS] = arrays_to_record(arrays)
    return content


def _instruction_parts(content: RecordDict) -> tuple[Arrays | None, dict[str, Any]]:
    arrays = record_to_arrays(content.array_records[ARRAYS]) if ARRAYS in content.array_records else None
    config = dict(content.config_records[CONFIG]) if CONFIG in content.config_records else {}
    return arrays, config


def fit_ins_to_content(ins: FitIns) -> RecordDict:
    return _instruction_content(ins.arrays, ins.config)


def content_to_fit_ins(content: RecordDict) -> FitIns:
    arrays, config = _instruction_parts(content)
    return FitIns(arrays=arrays, config=config)


def evaluate_ins_to_content(ins: EvaluateIns) -> RecordDict:
    return _instruction_content(ins.arrays, ins.config)


def content_to_evaluate_ins(content: RecordDict) -> EvaluateIns:
    arrays, config = _instruction_parts(content)
    return EvaluateIns(arrays=arrays, config=config)


def fit_res_to_content(res: FitRes) -> RecordDict:
    content = RecordDict({METRICS: _metric_record(res.metrics, res.num_examples)})
    if res.arrays is not None:
        content[ARRAYS] = arrays_to_record(res.arrays)
    if res.embedding_rows:  # a whole reply has no such record (as before row-sparse replies existed)
        content[EMBEDDING_ROWS] = arrays_to_record(res.embedding_rows)
    return content


def content_to_fit_res(content: RecordDict) -> FitRes:
    num_examples, metrics = _split_metrics(content.metric_records[METRICS])
    arrays = record_to_arrays(content.array_records[ARRAYS]) if ARRAYS in content.array_records else None
    rows = (record_to_arrays(content.array_records[EMBEDDING_ROWS]) if EMBEDDING_ROWS in content.array_records
            else None)
    return FitRes(arrays=arrays, num_examples=num_examples, metrics=metrics, embedding_rows=rows)


def evaluate_res_to_content(res: EvaluateRes) -> RecordDict:
    return RecordDict({METRICS: _metric_record(res.metrics, res.num_examples)})


def content_to_evaluate_res(content: RecordDict) -> EvaluateRes:
    num_examples, metrics = _split_metrics(content.metric_records[METRICS])
    return EvaluateRes(num_examples=num_examples, metrics=metrics)


def save_client_state(state: RecordDict, client_state: Mapping[str, Arrays]) -> None:
    """Write ``MDMTClient.state_dict()`` into ``context.state`` (entries it no longer has are removed)."""
    for key in [k for k in state.array_records if k.startswith(STATE_PREFIX)]:
        if key[len(STATE_PREFIX):] not in client_state:
            del state[key]
    for name, arrays in client_state.items():
        state[STATE_PREFIX + name] = arrays_to_record(arrays)


def load_client_state(state: RecordDict) -> dict[str, Arrays]:
    """``context.state`` → the ``MDMTClient.load_state_dict`` argument (``{}`` on a node's first message)."""
    return {key[len(STATE_PREFIX):]: record_to_arrays(record)
            for key, record in state.array_records.items() if key.startswith(STATE_PREFIX)}


def with_site_seconds(content: RecordDict, seconds: float) -> RecordDict:
    """A reply's content carrying the node's own compute time for the message (the deployment's overhead is
    the round's wall time minus it)."""
    content[SITE] = ConfigRecord({"seconds": float(seconds)})
    return content


def site_seconds(content: RecordDict) -> float:
    """The compute time a reply says its node spent (0 when the node did not say)."""
    record = content.config_records.get(SITE)
    return float(record["seconds"]) if record is not None and "seconds" in record else 0.0
