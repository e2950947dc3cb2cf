"""Training core (no Qt): datasets, the training loop, run folders."""
