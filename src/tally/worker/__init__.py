"""The worker: Kafka in, the pure core in the middle, PostgreSQL out."""
