"""Training: the trainer, its data, loss, schedule, validation, bad updates, signals and ranks."""
