"""What a task is: its loss, activation, metrics, decisions and calibration."""
