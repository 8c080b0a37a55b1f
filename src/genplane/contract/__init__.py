"""The wire contract, free of any framework: error registry, envelopes, status vocabularies."""
