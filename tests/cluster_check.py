"""Run by ``tests/test_cluster.py`` in a process of its own: stacsr on a two-node Ray cluster on this machine.

``ray.cluster_utils.Cluster`` starts a head node (2 CPUs) and a worker node (1 CPU), each with its own raylet
and object store, so tile outputs really move between nodes. Tile actors are spread over both nodes. Then:

1. ``enhance`` of the demo catalogue on the cluster, and in-process: the COGs must be bit-identical and both
   nodes must have run tiles;
2. ``batch`` over the STAC API given on the command line, on the cluster (two items in flight) and
   in-process: bit-identical COGs, tiles on both nodes;
3. ``enhance`` again, with the worker node removed after a few tile batches: it completes, identical.

Prints one JSON object (what the test asserts on). Usage: ``cluster_check.py OUT STAC_URL COLLECTION BBOX_JSON``.
"""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path

import numpy as np
import rasterio


def cogs(folder: Path) -> dict[str, np.ndarray]:
    found = {}
    for path in sorted(folder.rglob("*.tif")):
        if "source" in path.parts:
            continue
        with rasterio.open(path) as src:
            found[str(path.relative_to(folder))] = src.read()
    return found


def identical(a: Path, b: Path) -> bool:
    ca, cb = cogs(a), cogs(b)
    return bool(ca) and ca.keys() == cb.keys() and all(np.array_equal(ca[k], cb[k]) for k in ca)


class RemoveNode:
    """Progress that removes a cluster node after ``after`` tiles (once: items in flight call it from several
    threads)."""

    def __init__(self, cluster, node, after: int) -> None:
        self.cluster, self.node, self.after, self.seen, self.removed = cluster, node, after, 0, False
        self._lock = threading.Lock()

    def item(self, item_id: str, tiles: int) -> None: ...

    def advance(self, n: int = 1) -> None:
        with self._lock:
            self.seen += n
            if not self.removed and self.seen >= self.after:
                self.cluster.remove_node(self.node)
                self.removed = True


def main(out: Path, stac_url: str, collection: str, bbox: list[float]) -> None:
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "object_store_memory": 200 << 20})
    worker = cluster.add_node(num_cpus=1, object_store_memory=200 << 20)
    try:
        ray.init(address=cluster.address, log_to_driver=False)
        result = run_checks(cluster, worker, out, stac_url, collection, bbox)
    finally:  # a failed check must not leave its cluster for the next test's `ray.init` to join
        ray.shutdown()
        cluster.shutdown()
    print(json.dumps(result))  # last: the cluster's shutdown prints too


def run_checks(cluster, worker, out: Path, stac_url: str, collection: str, bbox: list[float]) -> dict:
    import ray

    from stacsr import demo, pipeline
    from stacsr.batch import run as B
    from stacsr.batch import spec as J
    from stacsr.catalog.presets import resolve
    from stacsr.engine import LocalEngine, RayEngine
    from stacsr.model import package as M

    package = M.load("default")
    local = LocalEngine(package)
    engine = RayEngine(package, actors=2)
    result: dict = {"nodes": len({n["NodeID"] for n in ray.nodes() if n["Alive"]})}

    items = demo.build_catalog(out / "source")
    preset = demo.demo_preset()
    pipeline.enhance(items, preset, demo.BBOX, out / "enhance-ray", package, engine, tile_size=64)
    pipeline.enhance(items, preset, demo.BBOX, out / "enhance-local", package, local, tile_size=64)
    result["enhance_identical"] = identical(out / "enhance-ray", out / "enhance-local")
    result["enhance_tiles_per_node"] = sorted(_per_node(engine.where()).values())

    def spec(name: str) -> J.JobSpec:
        return J.from_dict(
            {
                "name": name,
                "areas": [{"name": "overlap", "bbox": bbox}],
                "catalog": "earth-search",
                "stac_url": stac_url,
                "collection": collection,
                "best_per_tile": False,
                "output": str(out / name),
                "publish": {"catalog": str(out / name)},
                "resources": {"tile_size": 64, "items_in_flight": 2},
            }
        )

    before = _per_node(engine.where())
    job = spec("batch-ray")
    ray_report = B.run(job, resolve(job.catalog, job.collection, job.bands, job.stac_url), package, engine)
    after = _per_node(engine.where())
    job = spec("batch-local")
    local_report = B.run(job, resolve(job.catalog, job.collection, job.bands, job.stac_url), package, local)
    result["batch_done"] = [ray_report.count("done"), local_report.count("done")]
    result["batch_identical"] = identical(out / "batch-ray", out / "batch-local")
    result["batch_tiles_per_node"] = sorted(after[n] - before.get(n, 0) for n in after)

    remover = RemoveNode(cluster, worker, after=4)
    pipeline.enhance(
        items, preset, demo.BBOX, out / "enhance-lost-node", package, engine, tile_size=64, progress=remover
    )
    result["node_removed"] = remover.removed
    result["lost_node_identical"] = identical(out / "enhance-lost-node", out / "enhance-local")
    result["nodes_after"] = len({n["NodeID"] for n in ray.nodes() if n["Alive"]})
    engine.close()
    return result


def _per_node(where: list[tuple[str, int]]) -> dict[str, int]:
    totals: dict[str, int] = {}
    for node, tiles in where:
        totals[node] = totals.get(node, 0) + tiles
    return totals


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2], sys.argv[3], json.loads(sys.argv[4]))
