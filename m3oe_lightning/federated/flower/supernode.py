"""``flower-supernode`` with a shorter wait between its polls of the SuperLink (``m3oe-site`` starts this).

Why: Flower 1.41's SuperNode waits a fixed 3 s after every poll of the SuperLink that brought no message,
0.5 s between checks for its ClientApp's reply, and retries the pull of a message's arrays after 1, 2, 4 … s
when they are not at the SuperLink yet; with two to four message exchanges per round (train,
evaluate, and the evaluations a coordinator without data runs at the sites) that alone is 5–15 s a round,
whatever the sites compute (``experiments/bench/deployment.md``). There is no setting for it, so this
launcher runs Flower's own SuperNode command with those waits capped at ``M3OE_SUPERNODE_POLL_S`` seconds
(default 0.2; ``0`` or unset-to-``flower`` keeps Flower's): only the sleeps of that one Flower module are
replaced, everything else is Flower's code. The cost is more polls: 5 a second per idle site at 0.2 s.
Checked against the pinned ``flwr==1.41.0`` by tests/integration/test_flower_sites.py.
"""

from __future__ import annotations

import functools
import os
import sys
import time
import types

POLL_ENV = "M3OE_SUPERNODE_POLL_S"
DEFAULT_POLL_S = 0.2


def poll_seconds() -> float | None:
    """The cap on the SuperNode's waits (``None``: Flower's own)."""
    text = os.environ.get(POLL_ENV, str(DEFAULT_POLL_S)).strip().lower()
    if text in ("", "flower", "0"):
        return None
    value = float(text)
    if not value > 0:
        raise ValueError(f"{POLL_ENV}={text!r}: use a number of seconds > 0, or 'flower' for Flower's own waits")
    return value


PULL_BACKOFF_S, PULL_BACKOFF_CAP_S = 0.02, 0.5  # a message's parts not yet at the SuperLink: retry soon


def shorten_polls(cap_s: float) -> None:
    """Cap every ``time.sleep`` of Flower's SuperNode loop module at ``cap_s``, and let its pulls of a message's
    parts retry after 0.02–0.5 s instead of 1–10 s (other modules are untouched)."""
    from flwr.supernode import start_client_internal

    start_client_internal.pull_objects = functools.partial(start_client_internal.pull_objects,
                                                           initial_backoff=PULL_BACKOFF_S,
                                                           backoff_cap=PULL_BACKOFF_CAP_S)

    def capped_sleep(seconds: float) -> None:
        time.sleep(min(float(seconds), cap_s))

    shim = types.SimpleNamespace(**{name: getattr(time, name) for name in dir(time) if not name.startswith("__")})
    shim.sleep = capped_sleep
    start_client_internal.time = shim


def main() -> None:
    cap = poll_seconds()
    if cap is not None:
        shorten_polls(cap)
    from flwr.supernode.cli import flower_supernode

    sys.argv[0] = "flower-supernode"
    sys.exit(flower_supernode())


if __name__ == "__main__":
    main()
