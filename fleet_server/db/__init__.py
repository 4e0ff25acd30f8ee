"""PostgreSQL for the server parts: the pool (`pool`), the schema and its migrations
(`migrate`, `migrations/`), the batch writers (`batch`), the fetch helpers every store reads
through and the statement builder that puts enum values into SQL (`fetch`), and the one
device-hierarchy join every fleet query uses (`hierarchy`)."""
