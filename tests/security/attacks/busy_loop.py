"""Busy loop: burn CPU forever; the CPU-time or wall-clock limit must end it."""

counter = 0
while True:
    counter += 1
