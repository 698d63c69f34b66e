"""DAGs for the Airflow tests: one copy task whose URIs come from the run's conf, blocking or deferred.

The deferred one polls every 5 s: its first event must not beat the scheduler to the worker's exit
(see SkyplaneTransferTrigger.run).
"""

from __future__ import annotations

import pendulum
from airflow.sdk import DAG

from skyplane_provider.airflow.operators import SkyplaneTransferOperator

for dag_id, deferrable, poll in (("skyplane_test_copy", False, 0.5), ("skyplane_test_deferred", True, 5.0)):
    with DAG(dag_id=dag_id, schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
             params={"src": "", "dst": "", "dst_region": None}, render_template_as_native_obj=True) as dag:
        SkyplaneTransferOperator(task_id="copy", src="{{ params.src }}", dst=["{{ params.dst }}"],
                                 dst_regions=["{{ params.dst_region }}"], chunk_size="2MiB",
                                 deferrable=deferrable, poll_interval=poll)
    globals()[dag_id] = dag
