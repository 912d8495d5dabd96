"""Training: objectives (NTP, REFINE), the trainer and the phase presets."""
