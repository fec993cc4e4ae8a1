"""ModelServe reconciliation: pure builders and resolution, one service, thin Kopf handlers.

`builders`, `resolve`, `status` and `apply` are pure (dicts in, dicts out); `service`
does the I/O through `kube.Kube`; `handlers.register(registry)` adds the Kopf handlers,
`watches` the ones on the Deployments and Services a ModelServe owns (and the one queue
the event-driven reconciles go through).
"""
