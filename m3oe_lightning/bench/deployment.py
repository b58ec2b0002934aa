"""A real Flower deployment on this machine — one SuperLink, N sites — and its per-round latency bench.

:class:`LocalFederation` starts ``flower-superlink`` and one process per site on 127.0.0.1 (free ports,
each in its own process group, logs under ``root``), submits runs with ``flwr run`` and stops every
process it started. Sites are ``m3oe-site`` (a SuperNode whose ClientApp tasks one long-lived worker
serves) or, for comparison, a plain ``flower-supernode`` whose every message starts a fresh
``flwr-clientapp`` process (``persistent=False``). The integration test of sites holding their own data
(tests/integration/test_flower_sites.py) and this bench use it.

Bench (``python -m m3oe_lightning.bench.deployment``, part of ``make bench``): the same tiny 3-site FedAvg
run, ``--rounds`` rounds, under both kinds of site; per round, the round's wall time and the sites' own
compute time for it (the slowest site's fit + evaluate, as the sites report it), whose difference is the
deployment's overhead. Writes ``experiments/bench/deployment.md`` and ``deployment.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from m3oe_lightning.bench.processes import free_port, group_alive, start_group, stop_group, wait_for_port
from m3oe_lightning.config import CONF_DIR

REPO_ROOT = Path(CONF_DIR).parent
CONNECTION = "local"  # the SuperLink connection's name in $FLWR_HOME/config.toml


def _program(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


class LocalFederation:
    """A SuperLink and its sites on this machine, for as long as the ``with`` block lasts.

    Args:
        root: a folder for Flower's home (``FLWR_HOME``), the processes' logs and anything the runs write.
        node_configs: one ``--node-config`` string per site (e.g. ``"data-path='/x.csv' client-id='a'"``).
        persistent: ``m3oe-site`` (True) or a plain ``flower-supernode`` per site (False).
        env: extra environment of every process started (the SuperLink, its ServerApps, the sites).
    """

    def __init__(self, root: Path, node_configs: Sequence[str], *, persistent: bool = True,
                 env: Mapping[str, str] | None = None) -> None:
        self.root = Path(root)
        self.node_configs = list(node_configs)
        self.persistent = persistent
        self.port = 0
        self.superlink: subprocess.Popen | None = None
        self.sites: list[subprocess.Popen | None] = [None] * len(self.node_configs)
        self.site_ports = [0] * len(self.node_configs)
        self.env = {**os.environ, "FLWR_HOME": str(self.root / "flwr"), "FLWR_DISABLE_UPDATE_CHECK": "1",
                    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1", "PYTHONUNBUFFERED": "1",
                    # the SuperLink and SuperNodes start flower-superexec / flwr-clientapp from PATH
                    "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
                    **(env or {})}

    # ------------------------------------------------------------------------------------ lifecycle
    def __enter__(self) -> LocalFederation:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        (self.root / "flwr").mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        (self.root / "flwr" / "config.toml").write_text(
            f'[superlink.{CONNECTION}]\naddress = "127.0.0.1:{self.port}"\ninsecure = true\n')
        self.superlink = start_group(
            [_program("flower-superlink"), "--insecure", "--host", "127.0.0.1", "--port", str(self.port),
             "--disable-runtime-dependency-installation"], self.log("superlink"), env=self.env, cwd=self.root)
        wait_for_port(self.port, timeout_s=60, process=self.superlink)
        for k in range(len(self.node_configs)):
            self.start_site(k)

    def start_site(self, k: int) -> subprocess.Popen:
        """(Re)start site ``k``, with the same node config and runtime port as before."""
        self.site_ports[k] = self.site_ports[k] or free_port()
        program = [_program("m3oe-site")] if self.persistent else [_program("flower-supernode")]
        command = [*program, "--insecure", "--superlink", f"127.0.0.1:{self.port}", "--port", str(self.site_ports[k])]
        if self.node_configs[k]:
            command += ["--node-config", self.node_configs[k]]
        self.sites[k] = start_group(command, self.log(f"site{k}"), env=self.env, cwd=self.root)
        return self.sites[k]

    def kill_site(self, k: int) -> None:
        """SIGKILL site ``k``'s whole process group (a machine losing power), and wait until it is gone."""
        process = self.sites[k]
        if process is None:
            return
        os.killpg(process.pid, 9)
        process.wait()
        while group_alive(process.pid):
            time.sleep(0.05)

    def stop(self) -> None:
        for process in [*self.sites, self.superlink]:
            if process is not None:
                stop_group(process, grace_s=20)

    def log(self, name: str) -> Path:
        return self.root / f"{name}.log"

    # ------------------------------------------------------------------------------------------- runs
    def run_command(self, overrides: Sequence[str], run_config: dict[str, Any] | None = None) -> list[str]:
        """``flwr run`` of this repository's app on the SuperLink, the Hydra overrides in its run config."""
        config = {"hydra-overrides": shlex.join(overrides), **(run_config or {})}
        text = " ".join(f"{key}={json.dumps(value)}" for key, value in config.items())
        return [_program("flwr"), "run", str(REPO_ROOT), CONNECTION, "--stream", "--run-config", text]

    def submit(self, overrides: Sequence[str], run_config: dict[str, Any] | None = None,
               name: str = "run") -> subprocess.Popen:
        """Start ``flwr run`` (streaming the ServerApp's output to ``<root>/<name>.log``)."""
        return start_group(self.run_command(overrides, run_config), self.log(name), env=self.env, cwd=self.root)

    def run(self, overrides: Sequence[str], run_config: dict[str, Any] | None = None, *, name: str = "run",
            timeout_s: float = 900) -> int:
        process = self.submit(overrides, run_config, name)
        try:
            return process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            stop_group(process)
            raise


# ------------------------------------------------------------------------------------------- bench
TINY_FEDAVG = ["data=synthetic", "data.rows=1500", "data.num_users=60", "data.num_items=40", "data.batch_size=256",
               "model.star_dim=16", "model.bottom_dim=8", "model.expert_dims=[8]", "model.tower_dims=[8]", "seed=5",
               "threads=1", "federated=fedavg"]


def round_times(store: Path) -> list[dict[str, float]]:
    """Per round of the store's one run: wall time, the slowest site's compute, and their difference."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{store}")
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    history = {key: {m.step: m.value for m in client.get_metric_history(run.info.run_id, key)}
               for key in ("time/round_s", "time/site_compute_max_s")}
    out = []
    for step, wall in sorted(history["time/round_s"].items()):
        compute = history["time/site_compute_max_s"].get(step, float("nan"))
        out.append({"round": step, "round_s": wall, "site_compute_s": compute, "overhead_s": wall - compute})
    return out


def measure(root: Path, rounds: int, persistent: bool) -> dict[str, Any]:
    kind = "m3oe-site" if persistent else "flower-supernode"
    work = root / kind
    overrides = [*TINY_FEDAVG, f"federated.rounds={rounds}", f"paths.log_dir={work / 'logs'}",
                 f"paths.cache_dir={root / 'cache'}"]
    with LocalFederation(work, [f"partition-id={k}" for k in range(3)], persistent=persistent) as federation:
        start = time.perf_counter()
        code = federation.run(overrides)
        wall = time.perf_counter() - start
    if code != 0:
        raise RuntimeError(f"flwr run exited with {code}: see {work / 'run.log'}")
    per_round = round_times(work / "logs" / "mlflow.db")
    later = per_round[1:] or per_round  # round 1 also pays each site's first data load
    return {"sites": kind, "run_wall_s": wall, "rounds": per_round,
            "median_round_s": statistics.median(r["round_s"] for r in later),
            "median_overhead_s": statistics.median(r["overhead_s"] for r in later)}


def render(results: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    from m3oe_lightning.bench.common import format_load

    before, after = results
    lines = [
        "# Deployment latency: a SuperLink and 3 sites on one machine",
        "",
        f"Made by `{meta['command']}` on {meta['date']} at {meta['git_commit']} ({meta['machine']['cpu']}, "
        f"{meta['machine']['usable_cores']} cores; load average before: {format_load(meta['load_before'])}).",
        "The same tiny FedAvg run (3 sites, synthetic data, M3oE) under two kinds of site; rounds after the",
        "first (which also pays each site's first data load). *Site compute*: the slowest site's own time in",
        "fit + evaluate for the round, as it reports it; *overhead*: the round's wall time minus that.",
        "",
        "| sites | median round (s) | median overhead (s) | whole run incl. start (s) |",
        "|---|---:|---:|---:|",
    ]
    for r in results:
        lines.append(f"| `{r['sites']}` | {r['median_round_s']:.2f} | {r['median_overhead_s']:.2f} | "
                     f"{r['run_wall_s']:.1f} |")
    ratio = before["median_round_s"] / after["median_round_s"]
    lines += ["", f"Round time ratio (fresh process per message ÷ long-lived worker): **{ratio:.1f}×**; "
              f"target overhead ≤ 5 s: {'met' if after['median_overhead_s'] <= 5 else 'NOT met'} "
              f"({after['median_overhead_s']:.2f} s).", "", "Per round:", "",
              "| sites | round | round (s) | site compute (s) | overhead (s) |", "|---|---:|---:|---:|---:|"]
    for r in results:
        for row in r["rounds"]:
            lines.append(f"| `{r['sites']}` | {row['round']} | {row['round_s']:.2f} | {row['site_compute_s']:.2f} | "
                         f"{row['overhead_s']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> None:
    from m3oe_lightning.bench.common import command_line, run_context, write_outputs

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--out", default="experiments/bench")
    args = parser.parse_args(argv)
    meta = run_context(command_line("m3oe_lightning.bench.deployment", argv))
    with tempfile.TemporaryDirectory(prefix="m3oe-deploy-") as tmp:
        results = [measure(Path(tmp), args.rounds, persistent=False), measure(Path(tmp), args.rounds, persistent=True)]
    out = write_outputs(args.out, {"deployment.md": render(results, meta),
                                   "deployment.json": {"meta": meta, "results": results}})
    print(render(results, meta))
    print(f"written to {out}")


if __name__ == "__main__":
    main()
