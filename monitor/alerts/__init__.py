"""Alert delivery: payloads, the sinks (log, Kafka topic, signed webhook) and the dispatcher that sends stored alerts.

Alerts are stored with `storage.alerts.enqueue_alert` in the transaction of
the change that caused them; `dispatcher.run_alert_dispatch` delivers them.
"""
