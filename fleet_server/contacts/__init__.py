"""People's contact details, sealed at rest: the AES-256-GCM field cipher (`cipher`), merchants'
and field agents' details read back and masked (`contacts`), and the HTTP route (`routes`)."""
