"""Pipelines (batch, streaming), their options and the command line."""
