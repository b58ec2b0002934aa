"""The federated report's control table pairs each PAGE arm with its random-action control and each row-sparse
arm with its dense one, and tests each pair with Welch's t-test over seeds."""

from __future__ import annotations

from scipy import stats

from m3oe_lightning.reports import federated as report_federated
from m3oe_lightning.reports.federated import FederatedRun


def test_pairs_match_page_arms_to_the_control_at_the_same_aggregation_and_sparse_arms_to_dense_ones():
    names = ["centralized", "fedavg", "fedavg+sparse", "page-released", "page-released+sparse", "page-random",
             "page-random+sparse", "page-affine", "fedprox+sparse"]  # fedprox has no dense run; affine no +sparse
    assert report_federated.control_pairs(names) == [
        ("page-released", "page-random"), ("page-released+sparse", "page-random+sparse"),
        ("page-affine", "page-random"),
        ("fedavg+sparse", "fedavg"), ("page-released+sparse", "page-released"),
        ("page-random+sparse", "page-random")]


def runs_of(algorithm: str, global_aucs: list[float]) -> list[FederatedRun]:
    return [FederatedRun(algorithm=algorithm, seed=str(seed), run_id=f"{algorithm}-{seed}",
                         metrics={report_federated.GLOBAL_AUC: value})
            for seed, value in enumerate(global_aucs, start=1)]


def test_controls_table_gives_the_difference_of_means_and_welchs_p_per_pair():
    released, control = [0.771, 0.776, 0.781], [0.760, 0.768, 0.762]
    runs = runs_of("page-released", released) + runs_of("page-random", control)
    lines = report_federated.controls_table(runs)
    row = lines[2].split(" | ")
    assert row[0] == "| page-released" and row[1] == "page-random"
    global_cell = row[2 + report_federated.FINAL.index(report_federated.GLOBAL_AUC)]
    p = stats.ttest_ind(released, control, equal_var=False).pvalue
    assert global_cell.startswith(f"{100 * (sum(released) - sum(control)) / 3:+.2f} (")
    assert global_cell.endswith(f"({p:.2g} \\*)") and p < 0.05  # starred: below 0.05
    assert row[2] == "–"  # no personal AUC was logged: nothing to test


def test_controls_table_says_so_when_no_pair_ran():
    assert report_federated.controls_table(runs_of("fedavg", [0.7, 0.71]))[0].startswith("(No PAGE arm")
