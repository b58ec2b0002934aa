"""PAGE's Synthetic generator: its sizes, its determinism and the distribution its parameters describe."""

from __future__ import annotations

import numpy as np
import pytest

from m3oe_lightning.data.page_synthetic import COVARIANCE_DECAY, SyntheticSettings, generate


@pytest.fixture(scope="module")
def federation():
    return generate(SyntheticSettings(), seed=7)


def test_page_sizes_100_clients_of_210_train_90_local_test_and_a_7500_row_global_test(federation):
    assert SyntheticSettings().split_sizes == (210, 90, 75)
    assert len(federation.clients) == 100
    for client in federation.clients:
        assert client.train_x.shape == (210, 30) and client.test_x.shape == (90, 30)
        assert client.train_y.shape == (210,) and client.test_y.shape == (90,)
        assert client.train_x.dtype == np.float32 and client.train_y.dtype == np.int64
    assert federation.global_x.shape == (7500, 30) and federation.global_y.shape == (7500,)
    labels = np.concatenate([federation.global_y, *(c.train_y for c in federation.clients)])
    assert labels.min() >= 0 and labels.max() < 30


def test_the_same_seed_gives_the_same_federation_and_another_seed_another(federation):
    again, other = generate(SyntheticSettings(), seed=7), generate(SyntheticSettings(), seed=8)
    for a, b in zip(federation.clients, again.clients):
        assert np.array_equal(a.train_x, b.train_x) and np.array_equal(a.test_y, b.test_y)
    assert np.array_equal(federation.global_x, again.global_x)
    assert not np.allclose(federation.global_x, other.global_x)


def test_every_row_is_labelled_by_the_one_shared_linear_rule(federation):
    rule = lambda x: np.argmax(x.astype(np.float64) @ federation.weights + federation.bias, axis=1)  # noqa: E731
    for client in federation.clients:
        assert np.array_equal(rule(client.train_x), client.train_y)
        assert np.array_equal(rule(client.test_x), client.test_y)
    assert np.array_equal(rule(federation.global_x), federation.global_y)


def rows_of(federation, i: int) -> np.ndarray:
    """All 375 rows client ``i`` drew (its local splits and its 75 rows of the global test set)."""
    client, held = federation.clients[i], federation.global_x[75 * i:75 * (i + 1)]
    return np.concatenate([client.train_x, client.test_x, held]).astype(np.float64)


def test_features_shift_by_client_around_means_drawn_with_spread_beta(federation):
    means = federation.feature_means
    for i in range(0, 100, 9):  # each client's rows centre on its own mean (std ≤ 1, 375 rows)
        assert np.abs(rows_of(federation, i).mean(axis=0) - means[i]).max() < 0.3
    # a client's mean over features is its shift N(0, β=1) plus N(0, 1/30): spread ≈ 1 across clients
    assert 0.7 < means.mean(axis=1).std() < 1.3
    assert 0.7 < (means - means.mean(axis=1, keepdims=True)).std() < 1.3  # N(shift, 1) within a client


def test_within_a_client_feature_j_has_variance_j_plus_1_to_the_minus_1_2(federation):
    deviations = np.concatenate([rows_of(federation, i) - federation.feature_means[i] for i in range(100)])
    expected = np.power(np.arange(1, 31), -COVARIANCE_DECAY)
    assert np.allclose(deviations.var(axis=0), expected, rtol=0.05)
    off_diagonal = np.corrcoef(deviations.T)[~np.eye(30, dtype=bool)]
    assert np.abs(off_diagonal).max() < 0.05  # a diagonal covariance


def test_settings_that_cannot_make_a_federation_are_refused():
    with pytest.raises(ValueError, match="classes"):
        SyntheticSettings(classes=1)
    with pytest.raises(ValueError, match="train_fraction"):
        SyntheticSettings(train_fraction=1.0)


def test_per_client_rules_when_the_solution_is_not_shared():
    federation = generate(SyntheticSettings(clients=4, samples=200, alpha=1.0, shared_solution=False), seed=1)
    last = federation.clients[-1]
    rule = lambda x: np.argmax(x.astype(np.float64) @ federation.weights + federation.bias, axis=1)  # noqa: E731
    assert np.array_equal(rule(last.train_x), last.train_y)  # the stored rule is the last client's
    assert not np.array_equal(rule(federation.clients[0].train_x), federation.clients[0].train_y)
