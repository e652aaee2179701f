"""The site signing gateway (`linehost gateway`): EST over mutual TLS, quotas, its own store."""
