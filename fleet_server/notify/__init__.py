"""Task news to the people who act on it: 企业微信 and 钉钉 robots and signed webhooks, from an
outbox kept in the transactions that make the news (issue 26)."""
