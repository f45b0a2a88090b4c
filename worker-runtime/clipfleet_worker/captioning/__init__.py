"""Captioners and fusion for VeCLIP's recaptioning (issue 19)."""
