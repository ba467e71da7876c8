"""One module per operation; flows only compose tasks and report."""
