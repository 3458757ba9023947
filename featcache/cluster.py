"""Dask clusters for featcache: a running scheduler (``scheduler="tcp://host:8786"``), or local worker processes.

``workers=N`` starts N one-thread worker processes on this machine; ``workers="gpu"`` one per visible GPU
(``dask_cuda.LocalCUDACluster`` when dask-cuda is installed, else one worker per ``CUDA_VISIBLE_DEVICES``
entry). There is no scheduler of featcache's own: work is Dask tasks, and Dask retries a task whose
worker died. Workers started here pin their intra-op threads (:func:`thread_env`); start workers of your
own with the same variables to get features bit-identical to a single process pinned alike.
"""

import os
import shutil
import subprocess
import uuid
from contextlib import contextmanager
from pathlib import Path

from featcache import paths
from featcache.errors import FeatcacheError, ParameterError
from featcache.params import Interval, Options, Rule, validate

INSTALL = "pip install 'featcache[dask]'"
RULES = {
    "scheduler": [Rule(lambda a: isinstance(a, str) and "://" in a, "a Dask scheduler address like tcp://host:8786"),
                  None],
    "workers": [Interval(int, 1, None), Options("gpu"), None],
}
WORKER_WAIT_S = 60  # how long a client waits for the first worker of a running scheduler


def thread_env(threads: int = 1) -> dict:
    """Variables that pin a process's intra-op threads to ``threads``: TensorFlow, XLA on CPU, OpenMP, BLAS.
    Set before the process imports them (workers get them at start)."""
    n = str(threads)
    xla = f"--xla_cpu_multi_thread_eigen={str(threads > 1).lower()} intra_op_parallelism_threads={n}"
    return {"TF_NUM_INTRAOP_THREADS": n, "TF_NUM_INTEROP_THREADS": "1", "OMP_NUM_THREADS": n,
            "OPENBLAS_NUM_THREADS": n, "MKL_NUM_THREADS": n,
            "XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} {xla}".strip()}


def require_dask():
    """The ``distributed`` module, or one line saying what to install."""
    try:
        import distributed
    except ImportError:
        raise FeatcacheError(f"scheduler and workers need Dask: {INSTALL}") from None
    return distributed


@contextmanager
def connect(scheduler=None, workers=None):
    """A Dask client of the scheduler at ``scheduler``, or of a local cluster of ``workers`` worker processes,
    closed (and the local cluster stopped) afterwards."""
    validate({"scheduler": scheduler, "workers": workers}, RULES)
    if scheduler is not None and workers is not None:
        raise ParameterError("workers", workers, "left out when a scheduler is given")
    distributed = require_dask()
    if scheduler is None:
        with _local_cluster(distributed, workers) as local, distributed.Client(local) as client:
            yield client
        return
    try:
        client = distributed.Client(scheduler, timeout="20s")
    except OSError as exc:
        raise FeatcacheError(f"cannot reach the Dask scheduler at {scheduler} ({exc}): start one with "
                             "`dask scheduler`, or check the address") from None
    with client:
        try:
            client.wait_for_workers(1, timeout=WORKER_WAIT_S)
        except TimeoutError:
            raise FeatcacheError(f"no Dask worker joined {scheduler} within {WORKER_WAIT_S} s: start some with "
                                 f"`dask worker {scheduler}`") from None
        yield client


def _local_cluster(distributed, workers):
    env = thread_env(1)
    if workers != "gpu":
        return distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                        dashboard_address=None, env=env)
    try:
        from dask_cuda import LocalCUDACluster
    except ImportError:
        specs = {f"gpu{device}": {"cls": distributed.Nanny,
                                  "options": {"nthreads": 1, "env": {**env, "CUDA_VISIBLE_DEVICES": device}}}
                 for device in visible_gpus()}
        return distributed.SpecCluster(workers=specs, scheduler={"cls": distributed.Scheduler,
                                                                 "options": {"dashboard_address": None}})
    return LocalCUDACluster(threads_per_worker=1, dashboard_address=None, env=env)


def visible_gpus() -> list[str]:
    """The GPUs this process may use: the CUDA_VISIBLE_DEVICES entries, else every GPU nvidia-smi lists."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        devices = [d.strip() for d in listed.split(",") if d.strip() not in ("", "-1")]
    elif shutil.which("nvidia-smi"):
        found = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True).stdout
        devices = [str(i) for i, line in enumerate(found.splitlines()) if line.startswith("GPU ")]
    else:
        devices = []
    if not devices:
        raise FeatcacheError("workers='gpu' found no GPU (CUDA_VISIBLE_DEVICES and nvidia-smi list none): "
                             "give a number of workers instead")
    return devices


def check_shared_root(client, root=None) -> Path:
    """The features folder as every worker must see it; each worker writes a probe file there that this client
    must find, or one line says which worker does not share it. Returns the folder (absolute)."""
    folder = paths.features_dir(root).absolute()
    written = client.run(_write_probe, str(folder), uuid.uuid4().hex)
    try:
        for worker, (probe, error) in written.items():
            if error or not Path(probe).is_file():
                raise FeatcacheError(
                    f"the cache root {folder.parent} is not shared with the Dask worker {worker} "
                    f"({error or 'the file it wrote there is not here'}): use a folder every worker mounts at the "
                    "same path (featcache --cache-dir or FEATCACHE_CACHE)")
    finally:
        client.run(_remove_probes, [probe for probe, _ in written.values() if probe])
    return folder


def _write_probe(folder: str, token: str):
    """On a worker: (the probe file written in ``folder``, None), or (None, why it could not be)."""
    probe = Path(folder) / f".probe-{token}-{os.getpid()}"
    try:
        probe.parent.mkdir(parents=True, exist_ok=True)
        probe.write_text(token)
    except OSError as exc:
        return None, exc.strerror or str(exc)
    return str(probe), None


def _remove_probes(probes: list[str]):
    for probe in probes:
        Path(probe).unlink(missing_ok=True)
