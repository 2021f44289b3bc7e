"""GPU placement helpers that need no GPU: NVLink multicast stays off in every child a run starts."""

from __future__ import annotations

import subprocess
import sys

from runner.devices import NO_NVLINK_MULTICAST, disable_nvlink_multicast


def test_nvlink_multicast_is_off_in_children_and_a_users_value_is_kept(monkeypatch):
    for name in NO_NVLINK_MULTICAST:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NVSHMEM_DISABLE_NVLS", "0")  # the user's own choice
    disable_nvlink_multicast()
    names = sorted(NO_NVLINK_MULTICAST)
    child = subprocess.run([sys.executable, "-c", f"import os; print([os.environ[n] for n in {names!r}])"],
                           capture_output=True, text=True, check=True)
    assert eval(child.stdout) == ["0", "0", "1"]  # NCCL_NVLS_ENABLE, NVSHMEM_DISABLE_NVLS (kept), TORCH_SYMM_...
