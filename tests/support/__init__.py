"""Helpers shared by the test suites: backends, book writers, captures, child processes."""
