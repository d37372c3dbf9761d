"""Fault tests. Faults that break a server (stop Serve, restart Temporal) run against private
servers started by the test module itself, never against the shared session servers other tests
use."""
