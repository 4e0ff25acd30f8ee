"""The HTTP layer of the server parts: the app factory (`app`), typed service dependencies
(`services`), one renderer for every `FleetError` (`errors`), common request parameters
(`params`), rate limits (`ratelimit`) and the pages (`web`)."""
