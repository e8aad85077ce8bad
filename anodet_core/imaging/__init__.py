"""Images: decoding and resizing, registration of his onto cur, preparation of a model input."""
