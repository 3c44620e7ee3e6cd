"""Peer implementations run side by side with jaxgen (optional extra `peers`: torch, diffusers)."""
