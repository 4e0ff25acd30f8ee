"""Messages no consumer could take, kept byte for byte with the reason: `store` (hold, list,
count, purge), `queries`, `routes` (the ops API)."""
