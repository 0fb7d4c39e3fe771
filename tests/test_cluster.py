"""``stacsr batch`` on a Ray cluster of three nodes with separate object stores (``tests/cluster_check.py``,
run in a process of its own so that its cluster does not meet the session's local Ray).

The head has no CPU, so items can only run on the two worker nodes. Outputs go to the moto S3 server, items are
published to the pgstac STAC API. Each item runs on one node from read to upload, two at once on two nodes,
with COGs bit-identical to the in-process engine's; no credential is sent to a task; a node lost mid-item
costs nothing (the item runs again on the other node, identical, published once).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures import scenes as SC
from tests.fixtures.services import RAY_TEST_ENV

COLLECTION = "s2-cluster-test"
AOI = SC.world_bbox(172, 172, 268, 300)  # where both demo items overlap


@pytest.fixture(scope="module")
def sources(pgstac, blob_server):
    yield from SC.loaded(pgstac, SC.make_scenes(blob_server, "earth-search", collection=COLLECTION))


@pytest.mark.slow
def test_batch_on_three_nodes_runs_each_item_on_one_node(sources, pgstac, s3, tmp_path):  # noqa: F811
    script = Path(__file__).with_name("cluster_check.py")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | RAY_TEST_ENV | s3.env
    env["STACSR_TEST_BUCKET"] = s3.bucket()
    env["PYTHONPATH"] = str(Path(__file__).resolve().parent.parent)
    r = subprocess.run(
        [sys.executable, str(script), str(tmp_path), pgstac.url, COLLECTION, json.dumps(list(AOI))],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-4000:]
    result = json.loads(r.stdout.strip().splitlines()[-1])
    assert result["nodes"] == 3
    workers = set(result["workers"])
    # each item on one worker node, the two items on the two nodes, at the same time; none on the head
    assert result["cluster_done"] == 2
    assert set(result["item_nodes"]) == workers and result["head"] not in result["item_nodes"], result
    assert result["overlap"] == 2, result
    assert {node.split()[-1] for node in result["report_nodes"]} == workers  # the run report says where each ran
    assert result["identical"]
    # the storage credentials reached the nodes through their environment only
    assert result["tasks_inspected"] == 2 and not result["secret_sent"]
    # a node lost mid-item: the item ran again on the other node, identical, published once
    assert result["lost_node"] in workers and result["lost_done"] == 2
    assert result["lost_node"] not in result["lost_item_nodes"], result
    assert result["lost_identical"] and result["lost_overlap"] == 1  # items_in_flight 1: one at a time
    assert len(result["lost_published"]) == 2 == len(set(result["lost_published"]))
    # a node that joins mid-run (as an autoscaled one does) takes the items waiting for room
    assert result["grown_queued"] and result["grown_done"] == 2, result
    assert result["grown_node"] in result["grown_item_nodes"], result
    # a local output folder on several nodes: used when every node sees it, else refused before any work
    assert result["refused"] and "not on a filesystem the cluster's nodes share" in result["refused"]
    assert "\n" not in result["refused"] and result["marker_left"] == []
