"""Kafka clients: admin, consumer, replay producer. No Kafka client code exists anywhere else."""
