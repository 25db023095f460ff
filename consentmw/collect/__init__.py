"""Collection: capture raw hits on the request path, then minimise and enrich them off it."""
