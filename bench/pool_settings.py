"""Settings for ``python -m bench --pool``: Lockstep's settings with Django's native psycopg pool.

Each gunicorn worker keeps one pool sized to its threads; persistent connections
(CONN_MAX_AGE) and pooling exclude each other, so CONN_MAX_AGE is 0 here.
"""

import os

from config.settings import *  # noqa: F403
from config.settings import DATABASES

DATABASES["default"]["CONN_MAX_AGE"] = 0
DATABASES["default"]["CONN_HEALTH_CHECKS"] = False
DATABASES["default"]["OPTIONS"]["pool"] = {
    "min_size": int(os.environ.get("BENCH_POOL_SIZE", "8")),
    "max_size": int(os.environ.get("BENCH_POOL_SIZE", "8")),
    "timeout": 10,
}
