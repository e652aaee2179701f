"""The line dashboard: a web page fed from MQTT, like any MES would be."""
