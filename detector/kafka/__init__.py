"""The Kafka edge: the only package that imports kafka-python."""
