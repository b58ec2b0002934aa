"""Checks of where a run will write, before anything heavy is imported or built (they answer in ~1 s).

A store MLflow cannot use, a tracking server that does not answer, a folder that cannot be written: each
is one line naming the setting, before torch and Lightning load, before data are read, before a run exists.
"""

from __future__ import annotations

import os
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from m3oe_lightning.errors import UserInputError

REMOTE_SCHEMES = ("http", "https")
STORE_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql", "databricks", *REMOTE_SCHEMES)
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}


def is_remote(tracking_uri: str) -> bool:
    return urllib.parse.urlparse(tracking_uri).scheme in REMOTE_SCHEMES


def check_store(tracking_uri: str) -> None:
    """Refuse, in one line, a tracking URI MLflow cannot use or a server that does not answer.

    MLflow's own client retries a closed port for minutes and then prints several tracebacks; here a
    server gets ``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` (default 2) tries of ``MLFLOW_HTTP_REQUEST_TIMEOUT``
    (default 5 s) seconds, settable in the environment.
    """
    scheme = urllib.parse.urlparse(tracking_uri).scheme.split("+")[0]
    if scheme not in STORE_SCHEMES:
        hint = " (MLflow's file store raises since 3.13)" if scheme in ("", "file") else ""
        raise UserInputError(f"logger.tracking_uri={tracking_uri!r}: not a store MLflow can use{hint}; use "
                             f"sqlite:///logs/mlflow.db or http://host:port of an `mlflow server`")
    db = sqlite_path(tracking_uri)
    if db is not None:
        check_writable(db.parent, f"logger.tracking_uri={tracking_uri}: its folder")
    if scheme not in REMOTE_SCHEMES:
        return
    for name, default in HTTP_DEFAULTS.items():
        os.environ.setdefault(name, default)
    timeout = float(os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"])
    try:
        with urllib.request.urlopen(tracking_uri.rstrip("/") + "/health", timeout=timeout):
            pass
    except urllib.error.HTTPError:
        return  # something answers over HTTP: MLflow's own errors will be specific from here on
    except (OSError, ValueError) as error:
        reason = getattr(error, "reason", error)
        raise UserInputError(f"logger.tracking_uri={tracking_uri}: no MLflow server answers ({reason}); start one "
                             f"(mlflow server --host 127.0.0.1 --port …) or use the default sqlite store") from None



def sqlite_path(tracking_uri: str) -> Path | None:
    return Path(tracking_uri.removeprefix("sqlite:///")) if tracking_uri.startswith("sqlite:///") else None



def check_writable(folder: Path, setting: str) -> None:
    """Refuse, in one line and before a run exists, a folder the run could not write into."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise UserInputError(f"{setting}={folder} is not a writable folder ({error.strerror or error}); "
                             f"point it somewhere writable") from None
