"""The Kafka adapter: the consumer, the dead-letter producer, topic checks."""
