"""Ray Serve application: authenticated ingress in front of pluggable, batched models."""
