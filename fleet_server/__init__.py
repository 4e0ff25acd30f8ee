"""The fleet server: ingest of device messages into PostgreSQL, the device registry and its API.

It also owns the database schema (`migrations/`), which the payment bridge shares.
"""
