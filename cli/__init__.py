"""The `rem` command line: the runbook's commands for ad-hoc runs."""
