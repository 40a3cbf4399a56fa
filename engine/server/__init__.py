"""The upquant server: the REST API and events over the Workstation facade."""
