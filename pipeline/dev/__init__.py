"""Tools for trying and testing the stage, never on its production path.

The embedded broker, the stub Space API and the demo live here so that ``space-pipeline run``
imports none of them (nor ``rich``), and a reader following a record through ``pipeline/`` meets
only the production rooms.
"""
