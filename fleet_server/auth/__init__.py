"""Who may do what: accounts, roles and their permissions, sessions, and the audit log."""
