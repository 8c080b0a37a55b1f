"""The browser pages served next to the API, outside the /v1 contract (see :mod:`genplane.web.pages`)."""
