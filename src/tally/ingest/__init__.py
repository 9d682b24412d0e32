"""Usage events over HTTP into the workers' topic: POST /events (`tally ingest serve`)."""
