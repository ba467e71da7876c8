"""The run-time shim between the library (`rem/`) and the flows: Prefect when a Prefect API is
configured, the same functions in-process otherwise (orchestration), what a run reports (observe),
progress (progress), and the one place configuration becomes objects (wiring)."""
