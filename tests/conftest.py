import atexit
import os
import shutil
import tempfile

from anodet_core.allocator import keep_freed_memory

keep_freed_memory()  # as the CLI does: before torch, so that the suite's models reuse their large buffers

# Prefect and Dask must not write into the home folder or reach the network during tests
_tmp = tempfile.mkdtemp(prefix="anodet-tests-")
atexit.register(shutil.rmtree, _tmp, ignore_errors=True)
os.environ.setdefault("PREFECT_HOME", os.path.join(_tmp, "prefect"))
os.environ.setdefault("DASK_TEMPORARY_DIRECTORY", os.path.join(_tmp, "dask"))
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
for k in [k for k in os.environ if k.startswith("ANODET_")]:
    del os.environ[k]  # tests set what they need explicitly

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def prefect_harness():
    """One temporary Prefect API (SQLite) for the whole session: starting one costs ~15-20 s here."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="module")
def moto_endpoint():
    """A moto S3 server on 127.0.0.1 (a free port) for the module's tests: its endpoint URL."""
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


# ------------------------------------------------------------------------------------------ fault catalogue
# Tests marked ``@pytest.mark.fault("kind")`` are the cases of the fault catalogue: each feeds one kind of bad
# input or failure to the product and asserts the status, the message and that the rest is intact. The
# summary line counts them: a failing case is a fault that was not handled (its capture or night "lost").
_FAULT_CASES: dict[str, tuple[str, bool]] = {}  # nodeid -> (kind, passed)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    marker = item.get_closest_marker("fault")
    if marker is None or not marker.args:
        return
    if rep.when == "call" or (rep.when == "setup" and not rep.passed and not rep.skipped):
        _FAULT_CASES[item.nodeid] = (str(marker.args[0]), rep.passed)


def pytest_terminal_summary(terminalreporter):
    if _FAULT_CASES:
        kinds = {k for k, _ in _FAULT_CASES.values()}
        handled = sum(ok for _, ok in _FAULT_CASES.values())
        lost = len(_FAULT_CASES) - handled
        terminalreporter.write_line(f"faults: {len(kinds)} kinds, {handled} handled, {lost} lost")
