"""hdr.cluster.run_tasks with a real local Ray: results, exhausted retries recorded, backpressure."""
from __future__ import annotations

import sys

import pytest

from hdr.cluster import RayOptions, error_line, run_tasks


def _work(x):
    if x < 0:
        raise ValueError(f"cannot take {x}")
    return x * x


@pytest.fixture(scope="module")
def ray_local():
    import ray
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers need not import the tests package
    ray.init(address="local", num_cpus=2, object_store_memory=100 * 1024**2, include_dashboard=False,
             logging_level="ERROR")
    yield ray
    ray.shutdown()


@pytest.mark.parametrize("use_ray", [False, True])
def test_results_and_exhausted_retries_are_reported(use_ray, ray_local):
    ok, bad = {}, {}
    run_tasks(_work, [1, -2, 3, -4, 5], use_ray=use_ray,
              opts=RayOptions(num_cpus=1, max_retries=1, retry_exceptions=True, max_in_flight=2),
              on_result=lambda i, v: ok.__setitem__(i, v), on_error=lambda i, m: bad.__setitem__(i, m))
    assert ok == {1: 1, 3: 9, 5: 25}
    assert set(bad) == {-2, -4}
    assert "ValueError" in bad[-2] and "cannot take -2" in bad[-2] and "\n" not in bad[-2]


def test_error_line_is_one_line():
    try:
        raise RuntimeError("a\nb")
    except RuntimeError as e:
        assert error_line(e) == "RuntimeError: a b"
