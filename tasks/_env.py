"""Prefect settings that must be in place before ``import prefect`` (see ../shared/STACK.md).

Only defaults: anything the user set (a real server's PREFECT_API_URL, another PREFECT_HOME) wins.
"""

import os

os.environ.setdefault("PREFECT_HOME", os.path.abspath(os.environ.get("ANODET_PREFECT_HOME", ".prefect")))
# the ephemeral API server can take nearly Prefect's default startup timeout to start cold
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")  # the scheduler's INFO lines drown the summary
# our threads parallelise decoding and registration; NumPy's OpenBLAS pool inside each would oversubscribe the
# cores (two threads of registration ran slower than one). Not MKL_NUM_THREADS: torch reads it for its
# own thread count.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
