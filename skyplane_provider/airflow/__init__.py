"""Airflow 3 provider: ``SkyplaneTransferOperator``, ``SkyplaneHook`` and ``SkyplaneTransferTrigger``.

Registered through the ``apache_airflow_provider`` entry point (:mod:`.provider`). Only this folder
imports Airflow; importing it without Airflow installed fails, which is the point.
"""
