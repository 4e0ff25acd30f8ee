"""OTA campaigns on the server: releases and artifacts, campaigns with waves, the conductor."""
