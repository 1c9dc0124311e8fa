"""Role monitoring: node/DCGM exporters, Prometheus, alert rules, Alertmanager, Grafana."""
