"""Renderers: endpoint data in the shapes its consumers read."""
