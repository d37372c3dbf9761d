"""Shared test code: plain helpers any test package may import (fixtures stay in conftest.py)."""
