"""Acting on devices from the pages: signed remote commands with their results and the
merchant's settings (`remote`, `queries`), and their HTTP routes (`routes`)."""
