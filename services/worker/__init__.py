"""Temporal workflow, activities and worker for batch inference."""
