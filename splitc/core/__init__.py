"""Shared plumbing every stage may use: errors, file outputs, checkpoints, documents, tables."""
