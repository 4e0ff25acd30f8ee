"""The fleet server, one folder per noun of the design: `devices` (registry, states), `ingest`,
`inspection` (detectors and field agents' tasks), `figures`, `remote` (commands and settings),
`contacts`, `identity`, `ota`, `auth`; over `db` (pool, schema and migrations, which the payment
bridge shares, query helpers) and `http` (app, typed services, one error renderer, the pages).
Its errors are one tree (`errors`).
"""
