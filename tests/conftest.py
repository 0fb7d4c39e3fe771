"""Session-wide real local services for the test suite (all on 127.0.0.1, free ports).

Fixtures
--------
pgstac       PostgreSQL (+ PostGIS) + pgstac + stac-fastapi-pgstac (see tests/fixtures/services.py: PgstacService)
blob_server  Range-capable file server + Azure Blob / Planetary Computer SAS stand-in (BlobServer)
pc_stand_in  function-scoped: PC_SDK_SAS_URL -> blob_server, planetary_computer caches cleared; yields blob_server
s3           moto S3 server (tests/fixtures/s3.py: S3Server), one for the session
ray_local    lazy local Ray (RayLocal; attribute access falls through to the `ray` module); its node's environment
             holds the S3 server's endpoint and credentials, as a cluster node's does (items upload from their node)

Each service starts on first use and is torn down at the end of the session.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

_ROOT = Path(__file__).resolve().parent.parent
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

from tests.fixtures.s3 import s3  # noqa: E402, F401  (session fixture, registered here once for every module)
from tests.fixtures.services import (  # noqa: E402
    BlobServer,
    PgstacService,
    PostgresMissing,
    planetary_computer_stand_in,
    set_ray_test_env,
    start_ray_local,
)

# Ray reads these when it is imported / initialised: set them before any test module
# gets the chance to `import ray` (costs nothing, starts nothing).
set_ray_test_env()


@pytest.fixture(scope="session")
def pgstac():
    """A pgstac-backed STAC API: `.url`, `.load_collection`, `.load_items`, `.delete_items`, `.reset`."""
    service = PgstacService()
    try:
        service.start()
    except PostgresMissing as e:
        pytest.fail(str(e), pytrace=False)
    try:
        yield service
    finally:
        service.stop()


@pytest.fixture(scope="session")
def blob_server():
    """HTTP file server with Range support; `/blob/...` needs a SAS `sig` from `/sas/token/...`."""
    server = BlobServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def pc_stand_in(blob_server):
    """Make `planetary_computer.sign` fetch tokens from `blob_server` for this test."""
    with planetary_computer_stand_in(blob_server.sas_url):
        yield blob_server


@pytest.fixture(scope="session")
def ray_local(s3):  # noqa: F811
    """A local Ray (2 CPUs, 512 MiB object store, dashboard on), shut down at session end. Its raylet starts with
    the S3 server's variables in its environment, so its workers (and only they, and the tests that ask for
    ``s3``) have them: credentials reach the node as on a cluster, never through a task's arguments."""
    saved = dict(os.environ)
    os.environ.update(s3.env)
    try:
        handle = start_ray_local()
    finally:
        os.environ.clear()
        os.environ.update(saved)
    try:
        yield handle
    finally:
        handle.shutdown()


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """The fault matrix (tests/test_faults.py), when those tests ran: what was injected and what came of it."""
    from tests.fixtures.faults import REPORT

    if not REPORT:
        return
    cols = ["fault", "requests", "injected", "retried", "outcome", "data lost"]
    widths = [max(len(c), *(len(str(r[c])) for r in REPORT)) for c in cols]
    terminalreporter.section("fault matrix")
    terminalreporter.write_line("  ".join(c.ljust(w) for c, w in zip(cols, widths)))
    for r in REPORT:
        terminalreporter.write_line("  ".join(str(r[c]).ljust(w) for c, w in zip(cols, widths)))
