"""The device's life before, beside and after a merchant: stock, allocation, install, return,
repair, scrapping, loss and swap (`stages` the machine, `book` the service, `routes` the API)."""
