"""Schedules, work pool and automations as code: `rem deploy` applies them idempotently."""
