"""Marshmallow schemas for every request and response body. No Flask, no database."""
