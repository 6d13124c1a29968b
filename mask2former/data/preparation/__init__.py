"""Conversions that turn downloaded data sets into the layouts the registrations expect.

The scripts under ``datasets/`` are thin wrappers around these functions.
"""
