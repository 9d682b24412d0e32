"""The PostgreSQL adapter: schema migrations, definitions, and the flush transaction."""
