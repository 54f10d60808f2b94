"""The suite's shared setup, one concern a module; ``tests/conftest.py`` loads them as plugins."""
