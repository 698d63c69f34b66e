"""The per-job coordinator (docs/coordinator.md): one process per job, where the fleet runs.

It owns list -> diff -> chunk -> dispatch -> complete -> verify -> record -> report as one stream,
reaches every store only through a gateway of the store's region (it holds no store credentials),
and serves the job's state to clients over an authenticated HTTP API (:mod:`.server`,
:mod:`.client`). Clients hold a :class:`skyplane_provider.transfer.handle.TransferHandle`.
"""
