"""Lightning's callback entry points: looked up once per process, yet every Trainer still gets fresh callbacks."""

from __future__ import annotations

import sys
from importlib import metadata

import lightning as L
import pytest
from lightning.fabric.utilities import registry

from m3oe_lightning.training import entry_points

GROUP = "lightning.pytorch.callbacks_factory"


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    """An installed distribution (a dist-info folder on sys.path) whose entry point makes a callback."""
    (tmp_path / "m3oe_test_plugin.py").write_text(
        "import lightning as L\n\n"
        "class Marker(L.Callback):\n    pass\n\n"
        "def factory():\n    return [Marker()]\n")
    info = tmp_path / "m3oe_test_plugin-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: m3oe-test-plugin\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[{GROUP}]\nmarker = m3oe_test_plugin:factory\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(registry, "entry_points", registry.entry_points)  # restored after the test
    entry_points.cached_entry_points.cache_clear()
    yield
    entry_points.cached_entry_points.cache_clear()
    sys.modules.pop("m3oe_test_plugin", None)


def markers(trainer: L.Trainer) -> list[L.Callback]:
    return [cb for cb in trainer.callbacks if type(cb).__name__ == "Marker"]


def test_the_lookup_runs_once_and_each_trainer_gets_its_own_callbacks(plugin, monkeypatch, tmp_path):
    calls = []
    real = metadata.entry_points

    def counting(**selection):
        calls.append(selection)
        return real(**selection)

    monkeypatch.setattr(metadata, "entry_points", counting)
    entry_points.cache_callback_entry_points()
    entry_points.cache_callback_entry_points()  # idempotent
    settings = dict(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                    enable_model_summary=False, default_root_dir=tmp_path)
    first, second = L.Trainer(**settings), L.Trainer(**settings)
    assert calls == [{"group": GROUP}]
    (a,), (b,) = markers(first), markers(second)
    assert a is not b  # the factory still runs per Trainer


def test_without_the_cache_lightning_looks_up_per_trainer(plugin, monkeypatch, tmp_path):
    """The control: Lightning's own behaviour, which the cache changes only in how often it reads metadata."""
    calls = []
    real = metadata.entry_points
    monkeypatch.setattr(registry, "entry_points", lambda **s: calls.append(s) or real(**s))
    settings = dict(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                    enable_model_summary=False, default_root_dir=tmp_path)
    trainers = [L.Trainer(**settings), L.Trainer(**settings)]
    assert len(calls) == 2 and all(len(markers(t)) == 1 for t in trainers)
