"""Who may connect to the broker and what each may do there.

    access      the rules: a device publishes only under its own `hd/v1/{id}/up/...` and
                subscribes only to its own `down/...`; servers have their own accounts
    store       device credentials in PostgreSQL: provision once, rotate, revoke, authenticate
    certs       X.509 for TLS: a CA, server certificates, device client certificates, the CRL
    mosquitto   the same rules as a Mosquitto configuration (ACL file, password file, TLS)

The embedded amqtt broker enforces `access` through its plugins (haodian.embedded).
"""
