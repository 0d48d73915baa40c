"""scikit-learn's estimator checks for the three estimators; every excluded check is listed
with the reason."""

from __future__ import annotations

from sklearn.utils.estimator_checks import parametrize_with_checks

import embedcluster as ec

EXPECTED_FAILED: dict = {
    "KMeans": {
        "check_sample_weight_equivalence_on_dense_data": (
            "k-means++ draws its seeds from the weighted potential, which equals repeating rows in "
            "distribution but not draw for draw; test_kmeans.py::test_integer_weights_equal_repeated_rows "
            "checks the equivalence from the same initial centres"
        ),
    },
}


def expected_failed(est):
    return EXPECTED_FAILED.get(type(est).__name__, {})


@parametrize_with_checks(
    [ec.KMeans(n_clusters=3, random_state=0), ec.DBSCAN(), ec.NearestNeighbors()],
    expected_failed_checks=expected_failed,
)
def test_sklearn_compatible(estimator, check):
    check(estimator)
