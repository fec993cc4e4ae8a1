"""ModelServe reconciliation: pure builders and resolution, one service, thin Kopf handlers.

`builders`, `resolve` and `status` are pure (dicts in, dicts out); `service` does the I/O
through a small client; `handlers` registers the Kopf handlers (import it to register).
"""
