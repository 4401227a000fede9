"""``run_batch(..., scheduler=)`` / ``xt-slide batch --scheduler`` on a real Dask LocalCluster of
2 worker processes, with a tiny real checkpoint and the real slides: the same outputs as the
in-process batch, a worker killed mid-slide, a bad slide, Ctrl-C and resume, a scheduler that
cannot be reached or goes away."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from xt_core import batch, batch_dask
from xt_core.errors import SchedulerError
from xt_core.outputs.records import read_summary_csv
from xt_core.settings import OptionError, RunSettings

distributed = pytest.importorskip("distributed")

SETTINGS = RunSettings(mpp=0.25, tissue_threshold=0.01, threshold=0.3, preview_size=200)
SLOW = "OS-1-detail"  # the slide a test-only hook holds on a worker until the test kills it
ENV = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=os.pathsep.join([str(Path(__file__).parent), *sys.path]))


@pytest.fixture(scope="module")
def model_dir(tiny_mamba_model_dir: Path) -> Path:
    return tiny_mamba_model_dir


@pytest.fixture(scope="module")
def manifest(tmp_path_factory, slides_dir: Path) -> Path:
    """A good slide, broken.svs, another good one, and one without a pixel size given by its row."""
    folder = tmp_path_factory.mktemp("manifest")
    path = folder / "manifest.csv"
    path.write_text("slide,mpp\n"
                    f"{slides_dir / 'CMU-1-Small-Region.svs'},\n"
                    f"{slides_dir / 'broken.svs'},\n"
                    f"{slides_dir / 'OS-1-detail.ome.tif'},\n"
                    f"{slides_dir / 'kidney-48-5.tif'},0.5\n")
    return path


@pytest.fixture(scope="module")
def cluster():
    """2 worker processes, 1 slide and 1 torch thread each, as ``scheduler='local', jobs=2`` makes."""
    import dask

    with dask.config.set({"distributed.scheduler.allowed-failures": batch_dask.ALLOWED_FAILURES}):
        local = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                         silence_logs=logging.ERROR, env={"XT_NUM_THREADS": "1"})
    try:
        yield local
    finally:
        local.close()


@pytest.fixture(scope="module")
def reference(tmp_path_factory, manifest: Path, model_dir: Path):
    """The in-process batch, with the workers' one torch thread (float sums in the same order)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = tmp_path_factory.mktemp("reference") / "out"
        summary = batch.run_batch(manifest, out, model=model_dir, segment=True, settings=SETTINGS, progress=False)
    finally:
        torch.set_num_threads(before)
    return out, summary


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def _untimed(record: dict | None) -> dict | None:
    return None if record is None else {k: v for k, v in record.items() if k != "timing"}


def _strip_seconds(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]


def assert_same_outputs(mine: Path, theirs: Path) -> None:
    """Same files; the same records but for timing; the same summary but for seconds; the rest byte for byte."""
    assert _files(mine) == _files(theirs)
    for name in _files(theirs):
        a, b = mine / name, theirs / name
        if name.endswith(".json"):
            assert _untimed(json.loads(a.read_text())) == _untimed(json.loads(b.read_text())), name
        elif name == "summary.csv":
            assert _strip_seconds(read_summary_csv(a)) == _strip_seconds(read_summary_csv(b))
        else:
            assert a.read_bytes() == b.read_bytes(), name


def _counting(calls: list[str]):
    """An ``on_slide`` that notes each slide it is told about."""

    def on_slide(row, record, error) -> None:
        calls.append(row["slide"])

    return on_slide


# ----------------------------------------------------------------------------- on the cluster
def test_dask_batch_writes_what_the_in_process_batch_writes(tmp_path: Path, cluster, reference, manifest: Path,
                                                             model_dir: Path) -> None:
    ref_out, ref_summary = reference
    out = tmp_path / "out"
    calls: list[str] = []
    summary = batch.run_batch(manifest, out, model=model_dir, segment=True, settings=SETTINGS, progress=False,
                              scheduler=cluster.scheduler_address, on_slide=_counting(calls))
    assert [r["status"] for r in summary.rows] == ["done", "failed", "done", "done"]
    assert summary.exit_code == 1 and summary.done == 3
    assert summary.rows[1]["error"].startswith("not a readable slide")  # the bad slide is reported ...
    assert sorted(calls) == sorted(r["slide"] for r in summary.rows)  # ... and every slide once
    assert_same_outputs(out, ref_out)
    assert [_untimed(r) for r in summary.records] == [_untimed(r) for r in ref_summary.records]
    # each worker process loaded the model once and kept it for its next slides
    loads = distributed.Client(cluster, set_as_default=False)
    try:
        info = loads.run(batch_dask.worker_cache_info)
    finally:
        loads.close()
    assert all(v["loads"] <= 1 for v in info.values()) and sum(v["loads"] for v in info.values()) >= 1

    # resuming on the cluster skips the finished slides (the failed one is tried again)
    again = batch.run_batch(manifest, out, model=model_dir, segment=True, settings=SETTINGS, progress=False,
                            scheduler=cluster.scheduler_address, resume=True)
    assert again.resumed == 3 and [r["status"] for r in again.rows] == ["done", "failed", "done", "done"]


def _hold_slide(target: str, marker: str) -> int:
    """On a worker: the first time ``target`` starts, leave a half-written temporary and hang (to be killed)."""
    from xt_core import batch_dask as module

    real = module.analyse_slide

    def held(path, model, settings, *, segment, out_dir, progress=None):
        flag = Path(marker)
        if Path(path).name.startswith(target) and not flag.exists():
            (out_dir / f".{target}.geojson.k1ll3d.geojson").write_text('{"type": "Feat')
            flag.write_text(str(os.getpid()))
            time.sleep(300)
        return real(path, model, settings, segment=segment, out_dir=out_dir, progress=progress)

    module.analyse_slide = held
    return os.getpid()


def _kill_when_held(marker: Path, killed: list[int], deadline_s: float = 240) -> threading.Thread:
    def watch() -> None:
        deadline = time.monotonic() + deadline_s
        while time.monotonic() < deadline:
            if marker.exists() and marker.read_text():
                pid = int(marker.read_text())
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                return
            time.sleep(0.05)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def test_a_worker_killed_mid_slide_has_its_slide_done_once_elsewhere(tmp_path: Path, cluster, reference,
                                                                     manifest: Path, model_dir: Path) -> None:
    ref_out, _ = reference
    marker = tmp_path / "held"
    client = distributed.Client(cluster, set_as_default=False)
    try:
        pids = client.run(_hold_slide, SLOW, str(marker))
    finally:
        client.close()
    killed: list[int] = []
    watcher = _kill_when_held(marker, killed)
    out = tmp_path / "out"
    calls: list[str] = []
    summary = batch.run_batch(manifest, out, model=model_dir, segment=True, settings=SETTINGS, progress=False,
                              scheduler=cluster.scheduler_address, on_slide=_counting(calls))
    watcher.join(timeout=5)
    assert killed and killed[0] in pids.values(), "the held slide never started"
    assert [r["status"] for r in summary.rows] == ["done", "failed", "done", "done"]
    assert sorted(calls) == sorted(r["slide"] for r in summary.rows)  # every slide counted exactly once
    assert_same_outputs(out, ref_out)  # and no partial file of the killed try is left


def test_ctrl_c_marks_the_rest_interrupted_and_resume_finishes(tmp_path: Path, cluster, reference,
                                                               slides_dir: Path, model_dir: Path) -> None:
    """An in-memory model is saved once for the workers; Ctrl-C (here: in the callback) stops the
    batch with a resumable summary."""
    from xt_core.models.checkpoint import load_model
    from xt_core.models.xt import create_model

    loaded = load_model(model_dir)
    in_memory = create_model(loaded.config)
    in_memory.load_state_dict(loaded.state_dict())
    slides = [str(slides_dir / n) for n in ("CMU-1-Small-Region.svs", "OS-1-detail.ome.tif", "CMU-1-Small-Region_pyramid.ome.tiff")]
    out = tmp_path / "out"

    def stop(row, record, error) -> None:
        raise KeyboardInterrupt

    with pytest.raises(batch.BatchInterrupted) as interrupted:
        batch.run_batch(slides, out, model=in_memory, settings=SETTINGS, progress=False,
                        scheduler=cluster.scheduler_address, on_slide=stop)
    first = interrupted.value.summary
    assert first.interrupted and first.exit_code == 130 and first.done == 1
    assert sorted(r["status"] for r in read_summary_csv(out / "summary.csv")) == ["done", "interrupted", "interrupted"]
    saved = list((out / batch_dask.MODELS_DIR).iterdir())
    assert len(saved) == 1 and (saved[0] / "model.safetensors").is_file()

    summary = batch.run_batch(slides, out, model=in_memory, settings=SETTINGS, progress=False,
                              scheduler=cluster.scheduler_address, resume=True)
    assert summary.exit_code == 0 and summary.resumed >= 1 and summary.done == 3, summary.rows
    assert len(list((out / batch_dask.MODELS_DIR).iterdir())) == 1  # the same weights are saved once
    record = json.loads((out / "CMU-1-Small-Region.json").read_text())
    assert record["model"]["path"] == str(saved[0])
    reference_record = json.loads((reference[0] / "CMU-1-Small-Region.json").read_text())
    assert record["probabilities"] == reference_record["probabilities"]


# ----------------------------------------------------------------------------- a scheduler of its own
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_workers(address: str, n: int, timeout: float = 90) -> None:
    client = distributed.Client(address, set_as_default=False, timeout=timeout)
    try:
        client.wait_for_workers(n, timeout=timeout)
    finally:
        client.close()


def test_a_scheduler_that_goes_away_ends_the_batch_resumably(tmp_path: Path, cluster, manifest: Path,
                                                            model_dir: Path, reference) -> None:
    """`dask scheduler` and `dask worker` processes, as on several machines; the scheduler is
    killed while a slide runs: one error line naming it, the rest ``interrupted``, and a
    resume (here on the local cluster) ends with the outputs of an uninterrupted batch."""
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    dask_cli = [sys.executable, "-m", "distributed.cli.dask_scheduler"]
    scheduler = subprocess.Popen([*dask_cli, "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
                                 env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    worker = subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", address, "--nthreads", "1",
                               "--no-dashboard", "--no-nanny", "--death-timeout", "10"],
                              env=dict(ENV, XT_NUM_THREADS="1"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for_workers(address, 1)
        client = distributed.Client(address, set_as_default=False)
        try:
            client.run(_hold_slide, SLOW, str(tmp_path / "held"))
        finally:
            client.close()

        def kill_scheduler() -> None:
            deadline = time.monotonic() + 240
            while time.monotonic() < deadline and not (tmp_path / "held").exists():
                time.sleep(0.05)
            scheduler.kill()

        threading.Thread(target=kill_scheduler, daemon=True).start()
        out = tmp_path / "out"
        with pytest.raises(batch_dask.SchedulerLost) as lost:
            batch.run_batch(manifest, out, model=model_dir, segment=True, settings=SETTINGS, progress=False,
                            scheduler=address)
        assert "\n" not in str(lost.value) and str(lost.value).startswith(f"{address}: lost the Dask scheduler")
        rows = read_summary_csv(out / "summary.csv")
        assert rows[2]["status"] == "interrupted" and rows[3]["status"] in ("interrupted", "done")
        assert lost.value.summary.interrupted
    finally:
        for proc in (scheduler, worker):
            proc.kill()
            proc.wait(timeout=30)
    summary = batch.run_batch(manifest, out, model=model_dir, segment=True, settings=SETTINGS, progress=False,
                              scheduler=cluster.scheduler_address, resume=True)
    assert [r["status"] for r in summary.rows] == ["done", "failed", "done", "done"]
    assert_same_outputs(out, reference[0])


def test_no_scheduler_is_one_clear_line(tmp_path: Path, model_dir: Path, slides_dir: Path) -> None:
    import dask

    address = f"tcp://127.0.0.1:{_free_port()}"
    slide = str(slides_dir / "OS-1-detail.ome.tif")
    with dask.config.set({"distributed.comm.timeouts.connect": "1s"}), pytest.raises(SchedulerError) as error:
        batch.run_batch([slide], tmp_path / "out", model=model_dir, scheduler=address, progress=False)
    assert str(error.value).startswith(f"{address}: cannot reach the Dask scheduler") and "\n" not in str(error.value)
    assert not (tmp_path / "out").exists()  # nothing planned, nothing written
    with pytest.raises(OptionError, match="jobs"):
        batch.run_batch([slide], tmp_path / "out", model=model_dir, scheduler=address, jobs=2)
    with pytest.raises(OptionError, match="scheduler='local'"):
        batch.run_batch([slide], tmp_path / "out", model=model_dir, jobs=2)


def test_without_distributed_the_error_names_the_extra(tmp_path: Path, monkeypatch, model_dir: Path) -> None:
    monkeypatch.setitem(sys.modules, "distributed", None)  # as if it were not installed
    with pytest.raises(SchedulerError, match=r"local: a Dask batch needs the distributed package: "
                                             r"pip install 'napari-xt\[dask\]'"):
        batch.run_batch(["a.svs"], tmp_path / "out", model=model_dir, scheduler="local")
    # the in-process batch never imports it
    probe = "import sys, xt_core, xt_core.batch, xt_core.cli.batch; print('distributed' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=ENV,
                          timeout=120).stdout.strip() == "False"


class _FakeClient:
    def __init__(self, workers: dict) -> None:
        self.workers = workers

    def scheduler_info(self, n_workers: int = 5) -> dict:
        return {"workers": self.workers}


def test_slides_at_once_per_host_count_threads_or_gpus() -> None:
    client = _FakeClient({
        "tcp://10.0.0.1:1": {"host": "10.0.0.1", "nthreads": 1, "resources": {}},
        "tcp://10.0.0.1:2": {"host": "10.0.0.1", "nthreads": 1, "resources": {}},
        "tcp://10.0.0.2:1": {"host": "10.0.0.2", "nthreads": 8, "resources": {"GPU": 1}},
    })
    assert batch_dask._host_slots(client, gpu=False) == (("10.0.0.1", 2), ("10.0.0.2", 8))
    assert batch_dask._host_slots(client, gpu=True) == (("10.0.0.1", 2), ("10.0.0.2", 1))  # one slide per GPU


def test_thread_budget_keeps_workers_within_the_cores() -> None:
    assert batch_dask.thread_budget(2, 2) == 1
    assert batch_dask.thread_budget(32, 4) == 8
    assert batch_dask.thread_budget(2, 8) == 1  # never below one
    assert batch_dask.thread_budget(16, 3) * 3 <= 16


# ----------------------------------------------------------------------------- the command line
def test_cli_scheduler_local_jobs_2(tmp_path: Path, model_dir: Path, slides_dir: Path, reference) -> None:
    out = tmp_path / "out"
    slides = [str(slides_dir / "CMU-1-Small-Region.svs"), str(slides_dir / "broken.svs")]
    cmd = [sys.executable, "-m", "xt_core.cli.main", "batch", *slides, "--out", str(out), "--model", str(model_dir),
           "--segment", "--mpp", "0.25", "--tissue-threshold", "0.01", "--threshold", "0.3", "--preview-size", "200",
           "--scheduler", "local", "--jobs", "2"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=240)
    assert proc.returncode == 1, proc.stderr
    assert "1 of 2 slides done, 1 failed" in proc.stdout
    assert f"error: {slides[1]}: not a readable slide" in proc.stderr and "Traceback" not in proc.stderr
    assert "2/2" in proc.stderr and "slides/h" in proc.stderr  # one bar for the cohort
    rows = read_summary_csv(out / "summary.csv")
    assert [r["status"] for r in rows] == ["done", "failed"]
    ref_rows = _strip_seconds(read_summary_csv(reference[0] / "summary.csv"))
    assert _strip_seconds(rows) == ref_rows[:2]

    unreachable = f"tcp://127.0.0.1:{_free_port()}"
    proc = subprocess.run([*cmd[:-4], "--scheduler", unreachable], capture_output=True, text=True, timeout=120,
                          env=dict(ENV, DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT="1s"))
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"error: {unreachable}: cannot reach the Dask scheduler")
    assert proc.stderr.count("\n") == 1, proc.stderr


class _GoneFuture:
    """A future that finished just as its scheduler went away: fetching its result fails on the
    closed connection, or the reconnecting client has cancelled it meanwhile."""

    status = "finished"

    def __init__(self, cancelled: bool) -> None:
        self.cancelled = cancelled

    def result(self):
        from distributed.client import FutureCancelledError
        from distributed.comm.core import CommClosedError

        if self.cancelled:
            raise FutureCancelledError("xt-slide-0", "scheduler-connection-lost")
        raise CommClosedError("in <TCP (closed) ConnectionPool.gather>: Stream is closed")


class _Client:
    def __init__(self, status: str) -> None:
        self.status = status


@pytest.mark.parametrize("cancelled", [False, True])
@pytest.mark.parametrize("status", ["connecting", "running"])
def test_a_result_lost_with_the_connection(tmp_path: Path, status: str, cancelled: bool, monkeypatch) -> None:
    """The race the scheduler-loss test can hit: a slide finished, then the scheduler died before
    its result was fetched. With the client disconnected that is the scheduler lost (the slide is
    interrupted, to be redone by --resume); with the client still connected, the one slide fails
    with a line saying why and the batch goes on."""
    from xt_core.batch import BatchItem, BatchSummary
    from xt_core.outputs.records import summary_row

    slide = str(tmp_path / "a.svs")
    summary = BatchSummary(tmp_path, tmp_path / "summary.csv", ["a", "b"], [BatchItem(slide)],
                           [summary_row(slide, "pending")], [None])
    client = _Client(status)
    monkeypatch.setattr(batch_dask, "NOTICE_SECONDS", 0.3)
    if status == "connecting":
        with pytest.raises(batch_dask.SchedulerLost):
            batch_dask._outcome(_GoneFuture(cancelled), slide, client, "tcp://127.0.0.1:1", summary)
        assert read_summary_csv(tmp_path / "summary.csv")[0]["status"] == "interrupted"
    else:
        start = time.monotonic()
        record, error, _ = batch_dask._outcome(_GoneFuture(cancelled), slide, client, "tcp://127.0.0.1:1", summary)
        assert record is None and "could not be fetched from the Dask cluster" in str(error)
        assert str(error).startswith(slide) and time.monotonic() - start >= 0.3
