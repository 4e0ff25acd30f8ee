"""The MQTT link both sides speak through: a reconnecting persistent session, typed routing of
what arrives, and the task helpers every long-lived component needs.

    errors     LinkError and its tree
    backoff    capped, jittered exponential backoff
    tasks      cancel_and_wait: stopping an owned task reliably
    link       Link (one persistent session that keeps itself connected), Delivery, Receipt,
               tls_context, probe
    routing    Router: topic → validated protocol message → handler, with one reject hook

It depends only on the protocol (`firmware_protocols`) and the agent's base dependencies
(aiomqtt, structlog), so the edge agent and the servers share it without either importing the
other's runtime.
"""
