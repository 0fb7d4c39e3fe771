"""Run by ``tests/test_cluster.py`` in a process of its own: ``stacsr batch`` on a three-node Ray cluster.

``ray.cluster_utils.Cluster`` starts a head node with no CPU (nothing can run there: it holds the driver only)
and two worker nodes of one CPU each, each with its own raylet, object store and scratch folder
(``STACSR_SCRATCH`` in the node's environment). Outputs go to the moto S3 server and items are published to the
pgstac STAC API (both from the environment / command line). Then:

1. ``batch`` of two items, two in flight, on the cluster: each item runs on one worker node (read, tiles, COGs,
   upload), the two on different nodes at the same time; every argument sent to a task is inspected for the
   storage credentials (they must come from the nodes' environment, never from the driver);
2. the same ``batch`` in-process: bit-identical COGs;
3. ``batch`` again, one item at a time, with the worker node that runs the first item removed while that item is
   in flight: it completes on the other node, identical, published once;
4. a node that joins mid-run, as an autoscaled one: with the one worker left held busy, a batch's items queue,
   and the new node runs them;
5. a local output folder: used when every node sees it, refused in one line when one does not.

Prints one JSON object (what the test asserts on). Usage: ``cluster_check.py OUT STAC_URL COLLECTION BBOX_JSON``.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np


def main(out: Path, stac_url: str, collection: str, bbox: list[float]) -> None:
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "object_store_memory": 150 << 20})
    workers = {}
    for name in ("a", "b"):
        scratch = out / f"scratch-{name}"
        scratch.mkdir(parents=True)
        node = cluster.add_node(num_cpus=1, object_store_memory=150 << 20, env_vars={"STACSR_SCRATCH": str(scratch)})
        workers[node.node_id] = (node, scratch)
    try:
        ray.init(address=cluster.address, log_to_driver=False)
        result = run_checks(cluster, workers, out, stac_url, collection, bbox)
    finally:  # a failed check must not leave its cluster for the next test's `ray.init` to join
        ray.shutdown()
        cluster.shutdown()
    print(json.dumps(result))  # last: the cluster's shutdown prints too


class Recorder:
    """Wraps an engine: keeps every item's :class:`RunResult` and the bytes of every task's arguments."""

    def __init__(self, engine) -> None:
        self.engine, self.runs, self.sent = engine, [], []
        task_args = engine.task_args

        def recorded(*args):
            import ray.cloudpickle

            sent = task_args(*args)
            self.sent.append(ray.cloudpickle.dumps(sent[1:]))  # all but the model's reference
            return sent

        engine.task_args = recorded

    def __getattr__(self, name):
        return getattr(self.engine, name)

    def submit(self, *args, **kwargs):
        future = self.engine.submit(*args, **kwargs)
        future.add_done_callback(lambda f: f.exception() or self.runs.append(f.result()))
        return future

    def run(self, *args, **kwargs):
        return self.submit(*args, **kwargs).result()


def run_checks(cluster, workers, out: Path, stac_url: str, collection: str, bbox: list[float]) -> dict:
    import ray

    from stacsr.batch import run as B
    from stacsr.batch import spec as J
    from stacsr.catalog.presets import resolve
    from stacsr.engine import LocalEngine, RayEngine
    from stacsr.model import package as M

    package = M.load("default")
    bucket = os.environ["STACSR_TEST_BUCKET"]
    head = ray.get_runtime_context().get_node_id()
    result: dict = {"nodes": len([n for n in ray.nodes() if n["Alive"]]), "workers": sorted(workers)}

    def spec(name: str, in_flight: int) -> J.JobSpec:
        return J.from_dict(
            {
                "name": name,
                "areas": [{"name": "overlap", "bbox": bbox}],
                "catalog": "earth-search",
                "stac_url": stac_url,
                "collection": collection,
                "best_per_tile": False,
                "output": f"s3://{bucket}/{name}",
                "publish": {"api": stac_url, "collection": f"{collection}-{name}"},
                "resources": {"tile_size": 64, "items_in_flight": in_flight},
            }
        )

    def run(job: J.JobSpec, engine) -> dict:
        return B.run(job, resolve(job.catalog, job.collection, job.bands, job.stac_url), package, engine).to_dict()

    # 1. two items, two at once, one per worker node
    engine = Recorder(RayEngine(package, items_in_flight=2))
    report = run(spec("cluster", 2), engine)
    result["cluster_done"] = report["items"]["done"]
    result["item_nodes"] = [r.stats.node.split()[-1] for r in engine.runs]
    result["head"] = head
    result["overlap"] = overlap(engine.runs)
    result["report_nodes"] = [o.get("node") for o in report["outcomes"]]
    secrets = [os.environ[k].encode() for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")]
    result["tasks_inspected"] = len(engine.sent)
    result["secret_sent"] = any(s in sent for sent in engine.sent for s in secrets)

    # 2. the same in-process
    run(spec("local", 2), LocalEngine(package))
    result["identical"] = identical(bucket, "cluster", "local")

    # 3. the node running the first item is lost mid-item
    watcher = NodeLoss(cluster, workers)
    watcher.start()
    lost = Recorder(RayEngine(package, items_in_flight=1))
    report = run(spec("lost", 1), lost)
    watcher.join()
    result["lost_node"] = watcher.removed
    result["lost_done"] = report["items"]["done"]
    result["lost_item_nodes"] = [r.stats.node.split()[-1] for r in lost.runs]
    result["lost_overlap"] = overlap(lost.runs)
    result["lost_identical"] = identical(bucket, "lost", "local")
    result["lost_published"] = published(stac_url, f"{collection}-lost")

    # 5 (before 4, which patches the probe). A node that joins mid-run (as an autoscaled one) takes waiting items:
    # the one worker left is held busy, so both items queue; a new node joins and runs them
    grown = Recorder(RayEngine(package))  # items_in_flight unset: as many as the cluster holds
    result.update(grow(cluster, out, lambda: run(spec("grown", None), grown), grown))

    # 4. a local output folder: taken when every node sees it (one machine: it is shared), refused otherwise
    from stacsr.engine import ray_items

    folder = out / "local-output"
    folder.mkdir()
    RayEngine(package).check_output(str(folder))
    ray_items.sees = lambda path: False  # as a node that does not mount the folder answers
    try:
        RayEngine(package).check_output(str(folder))
        result["refused"] = None
    except ray_items.ClusterError as e:
        result["refused"] = str(e)
    result["marker_left"] = [p.name for p in folder.iterdir()]
    return result


def grow(cluster, out: Path, run, engine) -> dict:
    """Hold the only worker's CPU, start a batch (its items queue), add a node: the items run there."""
    import ray

    release = out / "release-the-worker"

    @ray.remote(num_cpus=1)
    def hold(path: str) -> None:
        while not os.path.exists(path):
            time.sleep(0.05)

    held = hold.remote(str(release))
    deadline = time.monotonic() + 60
    while ray.available_resources().get("CPU", 0) >= 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    reports: list = []
    batch = threading.Thread(target=lambda: reports.append(run()))
    batch.start()
    time.sleep(2)  # the batch has planned and submitted its items: they wait for a CPU
    queued = not engine.runs
    scratch = out / "scratch-new"
    scratch.mkdir()
    node = cluster.add_node(num_cpus=1, object_store_memory=150 << 20, env_vars={"STACSR_SCRATCH": str(scratch)})
    while not engine.runs and time.monotonic() < deadline:
        time.sleep(0.05)
    release.touch()
    ray.get(held)
    batch.join(120)
    return {
        "grown_queued": queued,
        "grown_node": node.node_id,
        "grown_done": reports[0]["items"]["done"] if reports else None,
        "grown_item_nodes": [r.stats.node.split()[-1] for r in engine.runs],
    }


def overlap(runs) -> int:
    """The most items that were running at the same moment."""
    spans = [(r.stats.started, r.stats.finished) for r in runs]
    return max(sum(s <= t < f for s, f in spans) for t, _ in spans) if spans else 0


class NodeLoss(threading.Thread):
    """Removes the first worker node whose scratch folder gets an item's scratch (the item is in flight there)."""

    def __init__(self, cluster, workers) -> None:
        super().__init__(daemon=True)
        self.cluster, self.workers, self.removed = cluster, workers, None

    def run(self) -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and self.removed is None:
            for node_id, (node, scratch) in self.workers.items():
                if any(p.name.startswith(".stacsr-") for p in scratch.iterdir()):
                    time.sleep(0.3)  # a few tiles into the item
                    self.cluster.remove_node(node)
                    self.removed = node_id
                    return
            time.sleep(0.05)


def cogs(bucket: str, prefix: str) -> dict[str, np.ndarray]:
    import rasterio
    from pyarrow import fs

    from stacsr.plumbing.storage import open_fs

    filesystem, root = open_fs(f"s3://{bucket}/{prefix}")
    found = {}
    for info in filesystem.get_file_info(fs.FileSelector(root, recursive=True)):
        if info.path.endswith(".tif"):
            with rasterio.open(f"s3://{info.path}") as src:
                name = info.path[len(root) :].replace(f"-{prefix}/", "/")
                found[name] = src.read()
    return found


def identical(bucket: str, a: str, b: str) -> bool:
    ca, cb = cogs(bucket, a), cogs(bucket, b)
    return bool(ca) and ca.keys() == cb.keys() and all(np.array_equal(ca[k], cb[k]) for k in ca)


def published(stac_url: str, collection: str) -> list[str]:
    import requests

    r = requests.get(f"{stac_url}/collections/{collection}/items", params={"limit": 100}, timeout=30)
    r.raise_for_status()
    return sorted(f["id"] for f in r.json()["features"])


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2], sys.argv[3], json.loads(sys.argv[4]))
