"""Retryable units of work. Each module holds plain functions (the logic, unit-tested directly)
and the tasks made from them (the function plus its retry policy)."""
