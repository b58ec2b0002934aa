"""Bad data through the training entry point (issue #16): exit code 2, exactly one ``error:`` line naming the
file, line or setting, no stack trace, and nothing half-written left in the cache folder.

In process (``report_user_errors(objective, cfg)``, what ``main`` runs once Hydra composed): these refusals
come after torch loads, which a subprocess would spend ~10 s on; the command line itself is covered by the
refusals in test_bad_input.py and test_faults.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from m3oe_lightning.train import objective
from tests.helpers import isolated, run_in_process
from tests.unit.test_movielens_readers import write_ml100k

pytestmark = pytest.mark.bad_input

RATINGS = ["1\t1\t5\t881250949", "2\t2\t3\t891717742", "3\t3\t4\t878887116", "4\t4\t1\t880606923",
           "5\t1\t4\t886397596", "1\t2\t2\t884182806", "2\t3\t5\t881171488", "3\t4\t4\t891628467",
           "4\t1\t5\t886324817", "5\t2\t3\t883603013"]


def train_entry(tmp_path: Path, capfd, *overrides: str):
    return run_in_process(objective, [*isolated(tmp_path), "trainer.max_epochs=1", *overrides], capfd)


def the_error_line(result) -> str:
    """Exit 2, no traceback, one ``error:`` line (returned)."""
    output = result.stderr + result.stdout
    assert result.returncode == 2, output
    assert "Traceback" not in output
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.stderr
    return lines[0]


def nothing_half_written(cache: Path) -> None:
    left = [p.name for p in cache.rglob("*")] if cache.exists() else []
    assert not [n for n in left if n.endswith((".pt", ".tmp")) or n.startswith(".")], left


def test_repeated_ratings_with_duplicates_error(tmp_path, capfd):
    """``cat u.data u.data`` with +data.duplicates=error: the first repeated line is named."""
    folder = write_ml100k(tmp_path / "data" / "movielens-100k", data=RATINGS + RATINGS)
    line = the_error_line(train_entry(tmp_path, capfd, "data=movielens100k", f"data.root={tmp_path / 'data'}",
                                    "+data.duplicates=error"))
    assert line.startswith(f"error: {folder / 'u.data'}, line 11: (user, item) (1, 1) repeats ")
    assert "data.duplicates=error" in line
    nothing_half_written(tmp_path / "cache")


def test_a_timestamp_beyond_int64(tmp_path, capfd):
    folder = write_ml100k(tmp_path / "data" / "movielens-100k",
                          data=[*RATINGS[:4], "5\t1\t4\t1180591620717411303424", *RATINGS[5:]])
    line = the_error_line(train_entry(tmp_path, capfd, "data=movielens100k", f"data.root={tmp_path / 'data'}"))
    assert line == (f"error: {folder / 'u.data'}, line 5: timestamp 1180591620717411303424 does not fit a 64-bit "
                    f"integer (-9223372036854775808 to 9223372036854775807)")
    nothing_half_written(tmp_path / "cache")


def test_an_empty_validation_fraction_is_refused_before_training(tmp_path, capfd):
    csv = tmp_path / "events.csv"
    csv.write_text("user_id,region,click\n" + "".join(f"{i % 7},{'EU' if i % 2 else 'US'},{i % 3 == 0:d}\n"
                                                      for i in range(50)))
    line = the_error_line(train_entry(tmp_path, capfd, "data=tabular", f"data.path={csv}", "data.domain_column=region",
                                    "data.tasks={click: click}", "data.sparse_features=[user_id]",
                                    "data.split_fractions=[0.9,0.0,0.1]"))
    assert line.startswith("error: data.split_fractions=[0.9, 0.0, 0.1]: ")
    assert line.endswith("with train and val and test > 0")
    nothing_half_written(tmp_path / "cache")
