"""Schedules and sensors of the code location."""
