"""The local stack: real Mosquitto, Kafka, MinIO and Elasticsearch without Docker.

``python -m stack up|down|status|logs|install|env`` from the repository root;
:func:`stack.api.ensure` is what the test fixtures use.
"""
