"""Training loops, schedules and the hook protocol layers use to take part in training."""
