"""``m3oe-site``: what a site of a real federation runs — a Flower SuperNode and its ClientApp worker.

    m3oe-site --superlink COORDINATOR:8000 --insecure \\
        --node-config "data-path='/site/ratings.parquet' client-id='site-a'"

It starts ``flower-supernode --isolation process`` (the site's connection to the coordinator's SuperLink)
as a child process and serves that node's ClientApp tasks in this process
(:mod:`m3oe_lightning.federated.flower.worker`): torch, Lightning and the site's encoded data are loaded
once, not once per message. The arguments are Flower's SuperNode flags (``--superlink``, ``--insecure`` or
``--root-certificates``, ``--node-config``; ``--port`` is the SuperNode's local runtime API, which only
this process talks to); anything after ``--`` is passed to ``flower-supernode`` unchanged.

It stops when the SuperNode stops (exit code: the SuperNode's) or on SIGTERM / SIGINT (128 + signal,
after stopping the SuperNode); a task running at that moment is abandoned and the coordinator counts the
site as failed for that round. README "Federated across sites" is the operator's guide.
"""

from __future__ import annotations

import argparse
import logging
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from m3oe_lightning.errors import UserInputError

log = logging.getLogger("m3oe_lightning.site_node")
DEFAULT_RUNTIME_PORT = 9094


def parse(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(prog="m3oe-site", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--superlink", required=True, help="the coordinator's SuperLink, HOST:PORT")
    parser.add_argument("--insecure", action="store_true", help="no TLS (trusted networks and tests only)")
    parser.add_argument("--root-certificates", help="PEM file of the CA that signed the SuperLink's certificate")
    parser.add_argument("--node-config", default="",
                        help="this site's settings: data-path='…' client-id='…' [heldout=true] [state-dir='…']")
    parser.add_argument("--port", type=int, default=DEFAULT_RUNTIME_PORT,
                        help=f"the SuperNode's local runtime API port on 127.0.0.1 (default {DEFAULT_RUNTIME_PORT})")
    argv = list(argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    args = parser.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    if not args.insecure and not args.root_certificates:
        raise UserInputError("m3oe-site: give --root-certificates <ca.pem> (TLS) or --insecure (trusted network)")
    if args.root_certificates and not Path(args.root_certificates).is_file():
        raise UserInputError(f"m3oe-site --root-certificates {args.root_certificates}: no such file")
    return args, extra


def supernode_command(args: argparse.Namespace, extra: Sequence[str]) -> list[str]:
    """Flower's SuperNode from this environment, its tasks left to this process (``--isolation process``)."""
    # Flower's SuperNode, its idle polls shortened (federated/flower/supernode.py; M3OE_SUPERNODE_POLL_S)
    command = [sys.executable, "-m", "m3oe_lightning.federated.flower.supernode", "--superlink", args.superlink,
               "--isolation", "process", "--host", "127.0.0.1",
               "--port", str(args.port)]
    command += ["--insecure"] if args.insecure else ["--root-certificates", args.root_certificates]
    if args.node_config:
        command += ["--node-config", args.node_config]
    return [*command, *extra]


def run(argv: Sequence[str]) -> int:
    args, extra = parse(argv)
    command = supernode_command(args, extra)
    from m3oe_lightning.federated.flower.client_app import make_client_app  # torch & co.: once, before any task
    from m3oe_lightning.federated.flower.worker import WorkerStats, serve

    app, stop, stats = make_client_app(), threading.Event(), WorkerStats()
    received: list[int] = []

    def on_signal(signum: int, _frame: object) -> None:
        received.append(signum)
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, on_signal)
    supernode = subprocess.Popen(command)
    watcher = threading.Thread(target=lambda: (supernode.wait(), stop.set()), daemon=True)
    watcher.start()
    log.info("site serving SuperNode tasks (pid %d) on 127.0.0.1:%d", supernode.pid, args.port)
    try:
        serve(f"127.0.0.1:{args.port}", app, stop=stop, insecure=True, stats=stats)  # local runtime API: no TLS
    finally:
        if supernode.poll() is None:
            supernode.terminate()
            try:
                supernode.wait(timeout=10)
            except subprocess.TimeoutExpired:
                supernode.kill()
                supernode.wait()
    log.info("site stopped after %d task(s) (%d failed, %.1f s in tasks)", stats.tasks, stats.failed,
             stats.seconds_in_tasks)
    if received:
        return 128 + received[0]
    return supernode.returncode or 0


def main(argv: Sequence[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per task poll otherwise
    try:
        code = run(sys.argv[1:] if argv is None else argv)
    except UserInputError as error:
        print(f"error: {error}", file=sys.stderr)
        code = 2
    sys.exit(code)


if __name__ == "__main__":
    main()
