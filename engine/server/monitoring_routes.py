"""Model-operation settings and drift as REST routes (facade operations,
`engine.service.monitoring`):

    GET  /api/v1/markets/{market}/ops-settings   ?unit: the effective settings (defaults
                                                 filled in) and whether any were stored
    PUT  /api/v1/markets/{market}/ops-settings   ?unit, body: a partial update (fields left
                                                 out keep their value); answers the settings
    GET  /api/v1/markets/{market}/drift          ?unit&model&limit: performance drift events,
                                                 newest first, and each model's newest
                                                 feature drift
    POST /api/v1/ml-models/{id}/feature-drift    body {last}: PSI and KS per feature now,
                                                 recorded (display only)
"""

from __future__ import annotations

from engine.server.routes import Route, add_routes

add_routes(
    [
        Route("GET", "/api/v1/markets/{market}/ops-settings", op="ops_settings"),
        Route("PUT", "/api/v1/markets/{market}/ops-settings", op="ops_settings_set"),
        Route("GET", "/api/v1/markets/{market}/drift", op="drift_events"),
        Route(
            "POST",
            "/api/v1/ml-models/{id}/feature-drift",
            op="feature_drift",
            fields={"id": "model"},
        ),
    ]
)
