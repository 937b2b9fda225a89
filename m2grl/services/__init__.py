"""Runs a local Kafka and Neo4j from Maven Central jars, for development, demos and tests."""
