"""A batch on Dask distributed: the same slides, outputs and summary as :mod:`xt_core.batch`, on many workers.

.. code-block:: python

    import xt_core

    summary = xt_core.run_batch("slides/manifest.csv", "/shared/results", model="/shared/models/lung",
                                scheduler="tcp://head-node:8786")            # workers: `dask worker ADDRESS`
    summary = xt_core.run_batch("slides/", "results", model="models/lung", scheduler="local", jobs=2)

The plan is the in-process batch's (:func:`xt_core.batch.plan_batch`: resume, clashing names,
the first summary), and each slide is the one per-slide function,
:func:`xt_core.api.analyse_slide`, run on a worker: it writes the slide's outputs into the
shared output folder under temporary names and renames them, the JSON last. The client alone
writes ``summary.csv`` (:func:`xt_core.batch.record_outcome`) as slides finish, so the folder
ends exactly as an in-process batch leaves it.

Faults. A slide's own error (an :class:`XTError`: a corrupt file, no pixel size) is a result,
not a crash: it comes back as a ``failed`` row and is never retried, because it would fail
again. Anything else raised is retried (``RETRIES``) in case it was the machine's (a shared
disk that blinked). A worker that dies mid-slide (killed, out of memory) has its slide
rescheduled on another by the scheduler; after ``ALLOWED_FAILURES`` deaths the slide is a
``failed`` row and the batch goes on. Its half-written temporaries are removed when the slide
starts again (and by the next batch). Ctrl-C cancels what is queued and raises
:class:`~xt_core.batch.BatchInterrupted`; a scheduler that goes away raises
:class:`SchedulerLost`. Both leave the summary with the unfinished slides ``interrupted``,
and ``resume=True`` picks up from there.

Each worker process loads the model once (keyed by checkpoint path and weights sha256) and
keeps it for its next slides. A model given as an object is sent as the checkpoint it was
loaded from, or, made in memory, saved once into ``<out>/.xt-models/<sha256[:16]>/``.

Threads: on a machine with ``c`` cores whose workers run ``n`` slides at once in all (their
threads; on GPUs, their GPUs), each slide gets ``c // n`` torch threads, so N workers x threads
stay within the cores (``XT_NUM_THREADS`` in a worker's environment overrides it; a local
cluster sets it). With ``device`` ``cuda``, every slide asks for one ``GPU`` worker resource,
so a GPU runs one slide at a time (start workers with ``dask worker ADDRESS --resources GPU=1``).

``distributed`` is an extra (``pip install 'napari-xt[dask]'``), imported only here.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import threading
import time
import traceback
import uuid
from concurrent.futures import CancelledError
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

from xt_core import runtime
from xt_core.api import analyse_slide, check_segmentation, resolve_model
from xt_core.batch import (
    BatchInterrupted,
    BatchPlan,
    BatchSummary,
    SlideCallback,
    collect_inputs,
    mark_interrupted,
    plan_batch,
    record_outcome,
)
from xt_core.errors import ModelFileError, PathError, SchedulerError, XTError
from xt_core.settings import OptionError, RunSettings

if TYPE_CHECKING:
    from xt_core.models.xt import XTModel

__all__ = ["ALLOWED_FAILURES", "LOCAL", "ModelRef", "RETRIES", "SchedulerLost", "SlideTask", "default_jobs",
           "run_dask_batch", "run_slide_task", "thread_budget", "worker_cache_info"]

#: ``scheduler=LOCAL`` starts a LocalCluster of worker processes on this machine.
LOCAL = "local"
#: Tries again after an exception that is not the slide's own (an :class:`XTError` never is retried).
RETRIES = 2
#: Worker deaths a slide may cause before it is a failed row (the local cluster's scheduler;
#: a scheduler you start has its own ``distributed.scheduler.allowed-failures``, 3 by default).
ALLOWED_FAILURES = 2
#: Where a model made in memory is saved for the workers (inside the output folder, hidden).
MODELS_DIR = ".xt-models"
_INSTALL_HINT = "pip install 'napari-xt[dask]'"


class SchedulerLost(SchedulerError):
    """The scheduler went away during a batch; ``summary`` is the batch as written (resumable)."""

    def __init__(self, address: str, summary: BatchSummary) -> None:
        super().__init__(address, f"lost the Dask scheduler during the batch; {summary.done} of {len(summary.rows)} "
                                  f"slides done, summary in {summary.summary_path}; run again with --resume")
        self.summary = summary


# ----------------------------------------------------------------------------- what a task carries
@dataclass(frozen=True)
class ModelRef:
    """A model as workers find it: a checkpoint folder on storage they share, and its weights' sha256."""

    path: str
    sha256: str


@dataclass(frozen=True)
class SlideTask:
    """One slide for a worker: everything :func:`run_slide_task` needs, small and picklable."""

    path: str
    settings: RunSettings
    model: ModelRef
    segment: bool
    out_dir: str
    #: torch threads per host (host -> total slides run at once there), measured by the client
    host_slots: tuple[tuple[str, int], ...] = ()
    #: a local cluster on a machine with several GPUs: worker ``k`` uses ``cuda:k % count``
    spread_gpus: bool = False


# ----------------------------------------------------------------------------- the worker side
_cache_lock = threading.Lock()
_cached: tuple[ModelRef, "XTModel"] | None = None
_loads = 0


def worker_model(ref: ModelRef) -> "XTModel":
    """The model of ``ref``, loaded once per worker process and kept for its next slides.

    One model at a time: a batch with another model replaces it. The weights must be those
    the client planned with (``sha256``): a worker that sees another file under the same path
    fails its slides with that reason instead of writing outputs of another model.
    """
    global _cached, _loads
    with _cache_lock:
        if _cached is None or _cached[0] != ref:
            _cached = None  # free the previous model before loading the next
            from xt_core.models.checkpoint import load_model

            model = load_model(ref.path)
            _loads += 1
            if model.weights_sha256 != ref.sha256:  # type: ignore[attr-defined]
                raise ModelFileError(ref.path, f"the weights this worker reads (sha256 {model.weights_sha256[:12]}) "
                                               f"are not the client's ({ref.sha256[:12]}); give every worker the "
                                               "same checkpoint")
            _cached = (ref, model)
        return _cached[1]


def worker_cache_info() -> dict[str, Any]:
    """``{"loads": n, "model": path or None}`` of this process (``client.run(worker_cache_info)``)."""
    return {"loads": _loads, "model": _cached[0].path if _cached is not None else None}


def run_slide_task(task: SlideTask) -> tuple[dict[str, Any] | None, XTError | None, float]:
    """Analyse one slide on a worker; ``(record, None, seconds)`` or ``(None, error, seconds)``.

    A slide's own error (:class:`XTError`) is returned, so the scheduler never retries it;
    anything else is raised, and retried (a worker's fault may not recur elsewhere).
    """
    t0 = time.perf_counter()
    settings = _apply_worker_resources(task)
    try:
        model = worker_model(task.model)
        t0 = time.perf_counter()  # as in-process: the slide's seconds, not the worker's first model load
        record = analyse_slide(task.path, model, settings, segment=task.segment, out_dir=Path(task.out_dir))
    except XTError as exc:
        _note_worker_traceback(exc)
        return None, exc, time.perf_counter() - t0
    return record, None, time.perf_counter() - t0


def _apply_worker_resources(task: SlideTask) -> RunSettings:
    """Give torch this worker's thread budget; pick this worker's GPU on a local multi-GPU cluster."""
    runtime.prepare_process()  # a `dask worker` that has not imported torch yet gets sleeping OpenMP threads
    import torch

    worker = _current_worker()
    threads = runtime.env_threads()
    if threads is None:
        own = worker.state.nthreads if worker is not None else 1
        slots = dict(task.host_slots).get(_worker_host(worker), own) if worker is not None else own
        threads = thread_budget(usable_cores(), max(slots, own))
    runtime.configure(threads=threads)
    if torch.get_num_threads() != threads:  # per process; set again in case another batch changed it
        torch.set_num_threads(threads)
    settings = task.settings
    if task.spread_gpus and worker is not None and isinstance(worker.name, int) and settings.device in ("auto", "cuda"):
        count = torch.cuda.device_count()
        if count > 1:
            settings = settings.replace(device=f"cuda:{worker.name % count}")
    return settings


def _current_worker():
    try:
        from distributed import get_worker

        return get_worker()
    except (ImportError, ValueError):  # called outside a worker (a test, a debugger)
        return None


def _worker_host(worker) -> str:
    from distributed.comm import get_address_host

    return get_address_host(worker.address)


def _note_worker_traceback(exc: BaseException) -> None:
    # the traceback stays on the worker; --debug on the client shows it as a note of the error
    if hasattr(exc, "add_note"):
        exc.add_note("on the Dask worker:\n" + "".join(traceback.format_exception(exc)).rstrip())


# ----------------------------------------------------------------------------- budgets
def usable_cores() -> int:
    """The cores this process may run on (its affinity mask under Slurm or taskset)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def thread_budget(cores: int, slots: int) -> int:
    """Torch threads for one slide when ``slots`` slides run at once on ``cores`` cores (at least 1).

    So that N workers x threads stays within the cores: oversubscribed OpenMP threads wait on
    each other and every slide gets slower.
    """
    return max(1, int(cores) // max(1, int(slots)))


def default_jobs(gpu: bool) -> int:
    """Workers of a local cluster when ``jobs`` is not given: one per GPU, else one per 4 cores."""
    if gpu:
        import torch

        return max(1, torch.cuda.device_count())
    return max(1, usable_cores() // 4)


# ----------------------------------------------------------------------------- the client side
def run_dask_batch(
    inputs: "str | os.PathLike | Sequence[str | os.PathLike]",
    out_dir: str | os.PathLike,
    *,
    scheduler: str,
    jobs: int | None = None,
    model: "XTModel | str | os.PathLike | None" = None,
    segment: bool = False,
    resume: bool = False,
    settings: RunSettings | None = None,
    progress: bool = True,
    on_slide: SlideCallback | None = None,
) -> BatchSummary:
    """:func:`xt_core.batch.run_batch` with ``scheduler`` (``"local"`` or ``"tcp://host:port"``).

    ``jobs`` is the number of worker processes of a local cluster (default :func:`default_jobs`);
    a scheduler you started has the workers it has. Slide paths, the model and ``out_dir``
    must be the same paths on every worker (shared storage); with a scheduler elsewhere,
    relative ones are made absolute (the records then name them so; the summary keeps them
    as given). Raises :class:`SchedulerError` when the scheduler cannot be reached,
    :class:`SchedulerLost` when it goes away.
    """
    settings = settings if settings is not None else RunSettings()
    scheduler = str(scheduler).strip()
    if jobs is not None and scheduler != LOCAL:
        raise OptionError(f"jobs sizes a local cluster (scheduler {LOCAL!r}); the scheduler {scheduler} has the "
                          "workers started for it")
    if jobs is not None and int(jobs) < 1:
        raise OptionError(f"jobs must be at least 1, got {jobs}")
    _require_distributed(scheduler)
    items = collect_inputs(inputs)
    xt_model = resolve_model(model)
    gpu = settings.device.startswith("cuda")
    if scheduler == LOCAL:  # the workers are this machine: its devices are theirs
        from xt_core.inference import resolve_device

        gpu = resolve_device(settings.device).type == "cuda"
    if segment:
        check_segmentation(xt_model)
    out = Path(out_dir)
    classes = list(xt_model.config.classes)
    ref = model_ref(xt_model, out)
    if scheduler != LOCAL:  # a worker elsewhere has another working folder: it needs whole paths
        ref = ModelRef(_absolute(ref.path), ref.sha256)
    del xt_model  # the workers load their own; the client only needed its classes and digest
    with _client(scheduler, jobs, gpu) as (client, address):
        plan = plan_batch(items, out, classes, segment=segment, resume=resume, weights_sha256=ref.sha256)
        return _run(client, address, plan, ref, settings, segment=segment, gpu=gpu, local=scheduler == LOCAL,
                    progress=progress, on_slide=on_slide)


def model_ref(model: "XTModel", out: Path) -> ModelRef:
    """The checkpoint workers load for ``model``: the one it came from, or one saved for them.

    A model loaded from a checkpoint (``load_model``) is sent as that folder: a change made to
    it in memory afterwards is not seen by the workers. One made in memory is saved once into
    ``<out>/.xt-models/<sha256[:16]>`` (the records name that checkpoint, so it is kept).
    """
    path, sha = getattr(model, "checkpoint_path", None), getattr(model, "weights_sha256", None)
    if path and sha:
        return ModelRef(str(path), str(sha))
    from xt_core._hashing import sha256_file
    from xt_core.models.checkpoint import WEIGHTS_NAME, save_model

    folder = out / MODELS_DIR
    tmp = folder / f".tmp-{uuid.uuid4().hex[:12]}"
    save_model(model, tmp)
    sha = sha256_file(tmp / WEIGHTS_NAME)
    final = folder / sha[:16]
    if final.exists():  # the same weights saved by an earlier run (saving is deterministic)
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        tmp.rename(final)
    return ModelRef(str(final), sha)


def _absolute(path: str) -> str:
    """``path`` from the filesystem root (as given where it already is, so records name it the same)."""
    return path if os.path.isabs(path) else os.path.abspath(path)


def _require_distributed(scheduler: str) -> None:
    try:
        import distributed  # noqa: F401
    except ImportError:
        raise SchedulerError(scheduler, f"a Dask batch needs the distributed package: {_INSTALL_HINT}") from None


@contextmanager
def _client(scheduler: str, jobs: int | None, gpu: bool) -> Iterator[tuple[Any, str]]:
    """A client of ``scheduler`` (a local cluster started for the batch, closed after it).

    Dask's own log lines (a lost connection's traceback, a worker restarted) are held back
    while it runs: the batch reports what they mean, in one line, itself.
    """
    with _QuietDaskLogs():
        cluster, client, address = _connect(scheduler, jobs, gpu)
        try:
            yield client, address
        finally:
            try:
                client.close(timeout=10)
            except Exception:
                pass
            if cluster is not None:
                try:
                    cluster.close(timeout=20)
                except Exception:
                    pass


def _connect(scheduler: str, jobs: int | None, gpu: bool) -> tuple[Any, Any, str]:
    import dask
    from distributed import Client, LocalCluster

    if scheduler == LOCAL:
        n = int(jobs) if jobs is not None else default_jobs(gpu)
        threads = str(thread_budget(usable_cores(), n))
        with dask.config.set({"distributed.scheduler.allowed-failures": ALLOWED_FAILURES}):
            cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None,
                                   silence_logs=logging.CRITICAL, resources={"GPU": 1} if gpu else None,
                                   env={"XT_NUM_THREADS": threads, "OMP_NUM_THREADS": threads,
                                        **runtime.omp_wait_policy_env()})
        try:
            return cluster, Client(cluster, set_as_default=False), cluster.scheduler_address
        except BaseException:
            cluster.close()
            raise
    try:
        return None, Client(scheduler, set_as_default=False), scheduler
    except Exception as exc:  # OSError/TimeoutError unreachable, ValueError a malformed address
        raise SchedulerError(scheduler, f"cannot reach the Dask scheduler ({_why(exc, scheduler)}); start it with "
                                        "`dask scheduler` and give the address it prints") from None


class _QuietDaskLogs:
    """Dask's loggers in this process (each ``distributed.*`` has its own level) at CRITICAL for a while."""

    def __enter__(self) -> None:
        import distributed  # noqa: F401  (its loggers exist once it is imported)

        names = ["distributed"] + [name for name in logging.root.manager.loggerDict if name.startswith("distributed.")]
        self._levels = {name: logging.getLogger(name).level for name in names}
        for name in names:
            logging.getLogger(name).setLevel(logging.CRITICAL)

    def __exit__(self, *exc: Any) -> None:
        for name, level in self._levels.items():
            logging.getLogger(name).setLevel(level)


def _why(exc: BaseException, address: str) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    text = text.replace(f"to {address} ", "").replace(address, "the address")
    return text[0].lower() + text[1:] if text else text


def _host_slots(client: Any, gpu: bool) -> tuple[tuple[str, int], ...]:
    """Per host, how many slides its workers run at once: their threads, or on GPUs their GPUs."""
    slots: dict[str, int] = {}
    for info in _workers(client):
        host = info.get("host", "")
        at_once = int(info.get("nthreads", 1) or 1)
        if gpu:
            at_once = min(at_once, int((info.get("resources") or {}).get("GPU", at_once)))
        slots[host] = slots.get(host, 0) + max(1, at_once)
    return tuple(sorted(slots.items()))


def _workers(client: Any) -> list[dict[str, Any]]:
    """What the scheduler knows of each worker (host, nthreads, resources)."""
    try:
        info = client.scheduler_info(n_workers=-1)  # all of them (some releases list 5 by default)
    except TypeError:  # releases before the argument listed all
        info = client.scheduler_info()
    return list(info.get("workers", {}).values())


def _warn_without_gpu_workers(client: Any) -> None:
    """Slides on CUDA wait for workers offering a ``GPU`` resource: say so when none has joined yet."""
    try:
        workers = _workers(client)
    except Exception:
        return
    if not any((info.get("resources") or {}).get("GPU") for info in workers):
        logging.getLogger(__name__).warning(
            "warning: no Dask worker offers a GPU yet; the slides wait for workers started with "
            "`dask worker ADDRESS --nthreads 1 --resources GPU=1`")


def _run(client: Any, address: str, plan: BatchPlan, ref: ModelRef, settings: RunSettings, *, segment: bool,
         gpu: bool, local: bool, progress: bool, on_slide: SlideCallback | None) -> BatchSummary:
    from distributed import as_completed

    summary = plan.summary
    bar = _CohortBar(len(summary.items), summary.resumed, enabled=progress)
    futures: dict[Any, int] = {}
    try:
        try:
            slots = _host_slots(client, gpu)
        except Exception:
            slots = ()
        resources = {"GPU": 1} if gpu else None
        if gpu and not local:
            _warn_without_gpu_workers(client)
        run_id = uuid.uuid4().hex[:8]
        for i in plan.todo():
            item = summary.items[i]
            if i in plan.clash:
                _finish(summary, i, None, PathError(item.path, plan.clash[i]), 0.0, bar, on_slide)
                continue
            task = SlideTask(item.path if local else _absolute(item.path), settings.for_slide(item.mpp), ref, segment,
                             os.fspath(summary.out_dir.absolute()), host_slots=slots, spread_gpus=local and gpu)
            key = f"xt-slide-{run_id}-{i}"
            futures[client.submit(run_slide_task, task, key=key, pure=False, retries=RETRIES,
                                  resources=resources)] = i
        for future in as_completed(list(futures), loop=client.loop):
            i = futures.pop(future)
            record, error, seconds = _outcome(future, summary.items[i].path, client, address, summary)
            _finish(summary, i, record, error, seconds, bar, on_slide)
    except KeyboardInterrupt:
        _cancel(client, futures)
        mark_interrupted(summary, list(futures.values()))
        raise BatchInterrupted(summary) from None
    finally:
        bar.close()
    return summary


def _outcome(future: Any, slide: str, client: Any, address: str,
             summary: BatchSummary) -> tuple[dict[str, Any] | None, BaseException | None, float | None]:
    """``(record, error, seconds)`` of a finished future; :class:`SchedulerLost` when the scheduler went away."""
    from distributed import KilledWorker

    if future.status == "cancelled":
        reason = _cancel_reason(future)
        if reason == "scheduler-connection-lost" or not _connected(client):
            mark_interrupted(summary)  # every slide not recorded yet is still pending
            raise SchedulerLost(address, summary)
        return None, PathError(slide, f"cancelled on the Dask cluster ({reason})"), None
    try:
        if future.status == "finished":
            return future.result()
        error = future.exception()
    except (OSError, CancelledError) as exc:
        # A slide that finished as the scheduler went away: fetching its result fails on the closed
        # connection (distributed's CommClosedError is an OSError), or the client, reconnecting, has
        # cancelled the future meanwhile (FutureCancelledError).
        if not _connected(client, wait=NOTICE_SECONDS):
            mark_interrupted(summary)
            raise SchedulerLost(address, summary) from exc
        return None, PathError(slide, f"its result could not be fetched from the Dask cluster ({exc})"), None
    if isinstance(error, KilledWorker):
        error = PathError(slide, "every Dask worker that ran it died (out of memory, or killed), as many times as "
                                 "the scheduler allows (distributed.scheduler.allowed-failures)")
    return None, error, None


#: How long a client may take to notice that its scheduler's connection broke.
NOTICE_SECONDS = 5.0


def _connected(client: Any, wait: float = 0.0) -> bool:
    """Whether ``client`` is still connected to its scheduler; with ``wait``, give it that many
    seconds to notice a connection that just broke (its status leaves ``running``)."""
    deadline = time.monotonic() + wait
    while True:
        if client.status not in ("running", "newly-created"):
            return False
        if time.monotonic() >= deadline:
            return True
        time.sleep(0.1)


def _cancel_reason(future: Any) -> str:
    try:
        future.result(timeout=0)
    except BaseException as exc:  # FutureCancelledError carries why
        return str(getattr(exc, "reason", "") or "cancelled")
    return "cancelled"


def _cancel(client: Any, futures: dict[Any, int]) -> None:
    try:
        client.cancel(list(futures), force=True)
    except Exception:  # the scheduler may be gone already
        pass


def _finish(summary: BatchSummary, i: int, record: dict[str, Any] | None, error: BaseException | None,
            seconds: float | None, bar: "_CohortBar", on_slide: SlideCallback | None) -> None:
    record_outcome(summary, i, record, error, seconds)
    bar.advance(failed=error is not None)
    if on_slide is not None:
        on_slide(summary.rows[i], record, error)


class _CohortBar:
    """One bar on the client for the whole cohort: slides done of all, failed, slides per hour."""

    def __init__(self, total: int, initial: int, enabled: bool) -> None:
        from tqdm import tqdm

        self._bar = tqdm(total=total, initial=initial, unit="slide", desc="slides", file=sys.stderr,
                         disable=not enabled, dynamic_ncols=True, leave=True)
        self._t0 = time.perf_counter()
        self._finished = 0
        self._failed = 0

    def advance(self, *, failed: bool) -> None:
        self._finished += 1
        self._failed += int(failed)
        hours = (time.perf_counter() - self._t0) / 3600
        rate = self._finished / hours if hours > 0 else 0.0
        self._bar.set_postfix_str(f"failed {self._failed}, {rate:.0f} slides/h", refresh=False)
        self._bar.update(1)

    def close(self) -> None:
        self._bar.close()
