"""What every benchmark shares: where and how it ran, the counters it reads, and how it writes its figures.

A benchmark's figures only mean something next to the machine, the load on it, the commit and the
command that produced them, so each one records :func:`machine_info`, :func:`git_state`,
:func:`command_line` and the load average, and writes a strict-JSON file beside its Markdown.
Training benchmarks measure with :func:`bench_trainer` (a Lightning trainer without logger, checkpoints
or bars) and :class:`StepTimer`, and run each measurement in a fresh process
(:func:`run_in_fresh_process`) when its peak RSS must be its own.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import math
import os
import platform
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import psutil
import torch
from omegaconf import DictConfig

from m3oe_lightning.config import build, compose
from m3oe_lightning.tracking import provenance
from m3oe_lightning.training.precision import trainer_precision
from m3oe_lightning.training.quiet import quiet_lightning

MB = 1024 * 1024
DEFAULT_OUT = "experiments/bench"
_QUIET = contextlib.ExitStack()  # quiet_lightning() contexts, left when the process ends


# -------------------------------------------------------------------------------- where it ran
def machine_info() -> dict[str, Any]:
    """CPU model, cores (all and usable by this process), memory, platform and Python version."""
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 0
    return {"cpu": cpu, "cores": os.cpu_count() or 0, "usable_cores": usable,
            "memory_gb": round(psutil.virtual_memory().total / 1024**3, 1),
            "platform": platform.platform(), "python": platform.python_version()}


def git_state() -> str:
    """The checkout's commit, marked when tracked files have uncommitted changes."""
    commit = provenance.git_commit()
    try:
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, check=True, cwd=Path(__file__).resolve().parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return commit
    return f"{commit} (+ uncommitted changes)" if dirty else commit


def command_line(module: str, argv: Sequence[str] | None) -> str:
    """The command that ran ``module``: this process's own, or ``python -m <module> <argv>`` when called
    with arguments from Python (tests)."""
    return shlex.join(sys.orig_argv) if argv is None else shlex.join(["python", "-m", module, *argv])


def utc_now(pattern: str = "%Y-%m-%d %H:%M:%S UTC") -> str:
    return dt.datetime.now(dt.timezone.utc).strftime(pattern)


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages (how busy the machine was around a measurement)."""
    return list(os.getloadavg())


def run_context(command: str) -> dict[str, Any]:
    """What a benchmark's report states about its run: command, UTC date, commit, machine and the load
    average before it started."""
    return {"command": command, "date": utc_now(), "git_commit": git_state(), "machine": machine_info(),
            "load_before": load_average()}


def format_load(values: Sequence[float]) -> str:
    return ", ".join(f"{x:.2f}" for x in values)


# ------------------------------------------------------------------------------------- counters
def process_cpu_seconds() -> float:
    """CPU seconds (user + system) this process has used."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def kernel_seconds_and_faults() -> tuple[float, int]:
    """This process's CPU seconds in the kernel and its minor page faults so far (memory faulted in afresh)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_stime, usage.ru_minflt


def system_busy_seconds() -> float:
    """CPU seconds every process on the machine has used (guest time is inside user/nice on Linux)."""
    times = psutil.cpu_times()
    return sum(getattr(times, name, 0.0) for name in ("user", "nice", "system", "irq", "softirq"))


def steal_seconds() -> float:
    """CPU seconds the hypervisor gave to other machines while this one wanted to run (Linux VMs)."""
    return getattr(psutil.cpu_times(), "steal", 0.0)


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB (``ru_maxrss``: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / MB if sys.platform == "darwin" else peak / 1024


def reset_peak_rss() -> bool:
    """Restart the peak-RSS count (Linux ``clear_refs``, resets ``ru_maxrss`` too); False if unsupported."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


# ------------------------------------------------------------------------------------- training
class StepTimer(L.Callback):
    """Timestamps the training hooks: batch wait, step, and the step's forward / backward / rest."""

    def __init__(self) -> None:
        self.waits: list[float] = []
        self.steps: list[float] = []
        self.forward: list[float] = []   # batch start → first on_before_backward (forward, loss, zero_grad)
        self.backward: list[float] = []  # first on_before_backward → on_after_backward
        self.rest: list[float] = []      # → batch end (optimiser step, self.log, the AutoML step when due)
        self.optimizer: list[float] = []  # the model optimiser's step() (inside rest)
        self.rows = 0
        self.epoch_seconds: list[float] = []
        self.iterator_seconds = 0.0      # time inside the loader's next() (set by a timed loader)
        self.cpu_seconds = 0.0           # this process's CPU time during the epochs
        self.system_busy_seconds = 0.0   # every process's CPU time during the epochs (whole machine)
        self.steal_seconds = 0.0         # CPU time the hypervisor took away during the epochs
        self.kernel_seconds = 0.0        # of cpu_seconds, the part in the kernel (page faults, mmap/munmap)
        self.minor_faults = 0            # pages this process faulted in during the epochs
        self._kernel0, self._faults0 = 0.0, 0
        self._last_end = self._start = self._epoch_start = self._cpu0 = self._busy0 = self._steal0 = 0.0
        self._marks: dict[str, float] = {}
        self._hooked = False

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Time the model optimiser's ``step()`` with torch's optimizer hooks (Lightning has no after-step hook)."""
        if self._hooked or not trainer.optimizers:
            return
        optimizer = trainer.optimizers[0]  # the model's (the AutoML optimiser, when there is one, is second)
        optimizer.register_step_pre_hook(lambda *_: self._marks.__setitem__("opt_start", time.perf_counter()))
        optimizer.register_step_post_hook(lambda *_: self._marks.__setitem__("opt_end", time.perf_counter()))
        self._hooked = True

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._cpu0, self._busy0 = process_cpu_seconds(), system_busy_seconds()
        self._steal0 = steal_seconds()
        self._kernel0, self._faults0 = kernel_seconds_and_faults()
        self._epoch_start = self._last_end = time.perf_counter()

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        now = time.perf_counter()
        self.waits.append(now - self._last_end)
        self._start = now
        self._marks = {}

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           loss: torch.Tensor) -> None:
        self._marks.setdefault("before_backward", time.perf_counter())  # first backward only (not AutoML's)

    def on_after_backward(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._marks.setdefault("after_backward", time.perf_counter())

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        now = time.perf_counter()
        self.steps.append(now - self._start)
        self.rows += int(batch["domain"].shape[0])
        if "before_backward" in self._marks and "after_backward" in self._marks:
            before, after = self._marks["before_backward"], self._marks["after_backward"]
            self.forward.append(before - self._start)
            self.backward.append(after - before)
            self.rest.append(now - after)
            if "opt_start" in self._marks and "opt_end" in self._marks:
                self.optimizer.append(self._marks["opt_end"] - self._marks["opt_start"])
        self._last_end = now

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.epoch_seconds.append(time.perf_counter() - self._epoch_start)
        self.cpu_seconds += process_cpu_seconds() - self._cpu0
        self.system_busy_seconds += system_busy_seconds() - self._busy0
        self.steal_seconds += steal_seconds() - self._steal0
        kernel, faults = kernel_seconds_and_faults()
        self.kernel_seconds += kernel - self._kernel0
        self.minor_faults += faults - self._faults0


def quiet_for_this_process() -> None:
    """Silence Lightning's banners and warnings for the rest of this benchmark process (entered again by
    each measurement, so a warnings filter reset in between, as pytest does per test, is set again)."""
    _QUIET.enter_context(quiet_lightning())


def compose_train(overrides: Sequence[str], default_root_dir: str | None = None) -> DictConfig:
    """The config ``python -m m3oe_lightning.train <overrides>`` runs; ``default_root_dir`` replaces
    ``${hydra:runtime.output_dir}``, which is unset outside ``@hydra.main``."""
    extra = [] if default_root_dir is None else [f"trainer.default_root_dir={default_root_dir}"]
    return compose("train", [*overrides, *extra])


def bench_trainer(cfg: DictConfig, callback: L.Callback, **settings: Any) -> L.Trainer:
    """``cfg.trainer`` (accelerator, devices ...) without logger, checkpoints, bars or sanity checks; of the
    configured callbacks only ``compile`` (it changes the speed, the others only what is saved)."""
    compile_node = (cfg.get("callbacks") or {}).get("compile")
    extra = [build(compile_node)] if compile_node is not None else []
    return build(cfg.trainer, callbacks=[callback, *extra], logger=False, enable_checkpointing=False,
                 enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                 **trainer_precision(cfg.trainer), **settings)


def run_in_fresh_process(module: str, args: Sequence[str]) -> dict[str, Any]:
    """``python -m <module> --worker-out FILE <args>`` in a new interpreter; the figures it wrote to FILE.
    A failing worker ends this process with its exit code."""
    with tempfile.TemporaryDirectory(prefix="m3oe-bench-") as tmp:
        result_path = Path(tmp) / "result.json"
        completed = subprocess.run([sys.executable, "-m", module, "--worker-out", str(result_path), *args])
        if completed.returncode != 0:
            raise SystemExit(completed.returncode)
        return json.loads(result_path.read_text())


# --------------------------------------------------------------------------------------- output
def json_safe(value: Any) -> Any:
    """NaN/inf (a figure that could not be measured) become ``null``, so the files stay strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_safe(v) for v in value]
    return value


def write_outputs(out_dir: Path | str, files: Mapping[str, Any]) -> Path:
    """Write each named output into ``out_dir`` (created): text as it is, anything else as strict JSON.
    Returns the folder."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        text = content if isinstance(content, str) else json.dumps(json_safe(content), indent=2, allow_nan=False) + "\n"
        (out / name).write_text(text)
    return out
