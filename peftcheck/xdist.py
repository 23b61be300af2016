"""pytest-xdist: one worker per method cluster, one GPU per worker (issue 14).

Registered only where xdist is installed and this process controls workers, so ``import
peftcheck`` and a plain pytest run never touch xdist.
"""

from __future__ import annotations

import os
import shlex
from typing import Any

import pytest

__all__ = ["XdistPlugin", "dist_was_chosen", "cuda_devices", "worker_threads", "WORKER_CUDA"]

WORKER_CUDA = "peftcheck_cuda_visible_devices"  # workerinput key: the device a worker may see


def dist_was_chosen(config: pytest.Config) -> bool:
    """Whether the user named a --dist mode (command line, PYTEST_ADDOPTS or ini addopts); if not,
    peftcheck's cluster scheduling replaces xdist's default ``load`` (which splits a method's items
    over workers, so each trains it again)."""
    args = [*config.invocation_params.args, *shlex.split(os.environ.get("PYTEST_ADDOPTS", ""))]
    try:
        args += list(config.getini("addopts"))
    except ValueError:
        pass
    return any(a == "--dist" or a.startswith("--dist=") or a in ("-d", "--distload") for a in args)


def cuda_devices() -> list[str]:
    """The caller's CUDA_VISIBLE_DEVICES list; empty where it is unset (then workers share)."""
    raw = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    return [d.strip() for d in raw.split(",") if d.strip() and d.strip() != "-1"]


def _scheduler(config: pytest.Config, log: Any) -> Any:
    from xdist.scheduler import LoadScopeScheduling

    from peftcheck.shard import scope_of

    rootdir = str(config.rootpath)

    class ClusterScheduling(LoadScopeScheduling):  # type: ignore[misc]
        """``--dist loadscope`` whose scope of a check item is its method cluster."""

        def _split_scope(self, nodeid: str) -> str:
            return scope_of(nodeid, rootdir) or super()._split_scope(nodeid)

    return ClusterScheduling(config, log)


class XdistPlugin:
    """Controller-side hooks: the scheduler and each worker's device."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.devices = cuda_devices()
        self.workers: dict[str, dict[str, Any]] = {}
        self.scheduling: str | None = None  # set where peftcheck's scheduler replaced --dist load
        self.collected = 0  # items the workers collected (every worker collects them all)

    @pytest.hookimpl(tryfirst=True)
    def pytest_xdist_make_scheduler(self, config: pytest.Config, log: Any) -> Any:
        if config.getoption("dist", "no") == "load" and not dist_was_chosen(config):
            self.scheduling = "peftcheck clusters (loadscope by method cluster)"
            return _scheduler(config, log)
        return None

    def pytest_configure_node(self, node: Any) -> None:
        workerid = str(node.workerinput["workerid"])  # gw0, gw1, ...
        worker: dict[str, Any] = {}
        if self.devices:  # set in the worker before anything initialises CUDA (see configure_worker)
            index = int(workerid.removeprefix("gw") or 0)
            worker["cuda_visible_devices"] = self.devices[index % len(self.devices)]
            node.workerinput[WORKER_CUDA] = worker["cuda_visible_devices"]
        self.workers[workerid] = worker

    def pytest_xdist_node_collection_finished(self, node: Any, ids: list[str]) -> None:
        self.collected = max(self.collected, len(ids))  # the controller collects nothing itself

    def session_fields(self) -> dict[str, Any]:
        """What the session record says about the workers."""
        dist = self.scheduling or str(self.config.getoption("dist", "no"))
        return {"xdist": {"dist": dist, "workers": dict(sorted(self.workers.items()))}}


def worker_threads(workers: int) -> int:
    """Each worker's share of this process's cores: N workers each running torch on every core
    made ``-n 2`` on 2 cores 2.4x slower than serial (issue 22)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // max(1, workers))


def configure_worker(config: pytest.Config) -> None:
    """In an xdist worker: see only the GPU the controller gave it, and use its share of the
    cores unless the user chose a thread count (OMP_NUM_THREADS)."""
    workerinput = getattr(config, "workerinput", {})
    device = workerinput.get(WORKER_CUDA)
    if device is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(device)
    if workerinput and "OMP_NUM_THREADS" not in os.environ:
        import torch

        threads = worker_threads(int(workerinput.get("workercount") or 1))
        torch.set_num_threads(threads)
        try:
            torch.set_num_interop_threads(threads)
        except RuntimeError:  # only settable before the first inter-op parallel work: intra-op is what counts
            pass
