"""What to label next: `headstart suggest` ranks unlabelled images for a person to label."""
