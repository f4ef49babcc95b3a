"""Shared fixtures: an isolated cache folder and one quick hardware profile per test session."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    """Never read or write the user's ~/.cache/convopt from tests."""
    mp = pytest.MonkeyPatch()
    mp.setenv("CONVOPT_CACHE_DIR", str(tmp_path_factory.mktemp("convopt-cache")))
    yield
    mp.undo()


@pytest.fixture(scope="session")
def quick_profile():
    from convopt.analysis.hardware import measure_profile

    return measure_profile(quick=True)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True, scope="session")
def _cached_profile(_isolated_cache, quick_profile):
    """Seed the isolated cache with the quick profile so CLI tests do not each re-measure the machine."""
    import json

    from convopt.analysis.hardware import machine_fingerprint
    from convopt.io import atomic_write_text, cache_dir

    profile_id = machine_fingerprint(quick_profile.threads)["id"]
    atomic_write_text(cache_dir() / "hardware" / f"{profile_id}.json", json.dumps(quick_profile.to_dict()))


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a test module: the suite shares two cores, and for small tensors OpenMP's
    second thread mostly waits on the first (use with pytestmark = pytest.mark.usefixtures("one_thread"))."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
