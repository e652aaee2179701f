"""MQTT for the line dashboard and MES: host status, jig state and the results relay."""
