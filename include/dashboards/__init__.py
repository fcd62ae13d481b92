"""Dashboards as data: Grafana dashboards and data sources (grafana-foundation-sdk), Kibana
data views and saved objects, Elasticsearch index templates, and their idempotent provisioning."""
