"""Inference backends. Every backend exposes the same small :class:`~calib.engines.base.Engine` interface."""
