"""gpiozero pin factories of ours."""
