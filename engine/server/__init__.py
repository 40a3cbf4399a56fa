"""The upquant server: the REST API and events over the Workstation facade.

`app.create_app` builds the aiohttp application (auth in `auth`, the OpenAPI document and
docs page in `openapi`); REST paths are declared with `routes.add_routes` by the modules of
this package, which `create_app` imports. `lifecycle` and `runner` start and find a server.
"""
