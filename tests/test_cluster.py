"""stacsr on a Ray cluster of two nodes with separate object stores (``tests/cluster_check.py``, run in a
process of its own so that its cluster does not meet the session's local Ray).

One ``enhance`` and one ``batch`` (two items in flight, STAC API search, static catalogue) run their tiles
on both nodes and write COGs bit-identical to the in-process engine's; removing a node mid-run costs no tile.
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
def test_enhance_and_batch_on_two_nodes(sources, pgstac, tmp_path):
    script = Path(__file__).with_name("cluster_check.py")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | RAY_TEST_ENV
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
    assert result["nodes"] == 2
    assert result["enhance_identical"] and result["batch_identical"]
    assert len(result["enhance_tiles_per_node"]) == 2 and min(result["enhance_tiles_per_node"]) > 0, result
    assert len(result["batch_tiles_per_node"]) == 2 and min(result["batch_tiles_per_node"]) > 0, result
    assert result["batch_done"] == [2, 2]
    assert result["node_removed"] and result["nodes_after"] == 1 and result["lost_node_identical"]
