"""The line at run time: one runner per jig, a supervisor over all of them."""
