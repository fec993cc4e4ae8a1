"""ModelServe reconciliation: pure builders and resolution, one service, thin Kopf handlers.

`builders`, `resolve`, `status` and `apply` are pure (dicts in, dicts out); `service`
does the I/O through `kube.Kube`; `handlers.register(registry)` adds the Kopf handlers.
"""
