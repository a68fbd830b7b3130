"""Heads, linear probes, fine-tuning schedules, domain adaptation and checkpoints."""
