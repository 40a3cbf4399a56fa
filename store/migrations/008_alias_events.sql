-- Aliases with history (issue 11): per market/unit one `champion`, any number of `challenger`s
-- and `shadow`s. Every move is one row of `alias_events`, appended and never changed: DuckDB
-- has no triggers, so append-only is the code's rule (store.registry's `_append_event` is the
-- only statement that touches the table, an INSERT; tests/store/test_aliases.py checks that no
-- UPDATE or DELETE of it exists anywhere). The holders are derived from it (the `aliases`
-- view): the one source of truth. `models.status` keeps a model's state apart from the
-- champion alias (candidate; retired: served as champion; rolled_back), and reads of a model
-- say `champion` while it holds that alias.
--
-- An event: `model_id` gains the alias (null: released), `previous_model_id` loses it (null:
-- nobody held it). A champion move names both; challenger and shadow are per model, so their
-- events name one of the two. The refs keep what the models were called after a delete.
CREATE SEQUENCE alias_events_id_seq START 1;
CREATE TABLE alias_events (
    id BIGINT PRIMARY KEY DEFAULT nextval('alias_events_id_seq'),
    market VARCHAR NOT NULL,
    unit VARCHAR NOT NULL,
    alias VARCHAR NOT NULL CHECK (alias IN ('champion', 'challenger', 'shadow')),
    model_id BIGINT,
    previous_model_id BIGINT,
    model_ref VARCHAR,
    previous_ref VARCHAR,
    moved_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    moved_by VARCHAR NOT NULL CHECK (moved_by IN ('user', 'gate', 'schedule', 'drift')),
    reason VARCHAR,
    CHECK (model_id IS NOT NULL OR previous_model_id IS NOT NULL),
    CHECK (alias = 'champion' OR model_id IS NULL OR previous_model_id IS NULL)
);

-- The holders now: the newest event of each champion seat (market, unit) and of each model's
-- challenger or shadow alias, where it gave the alias to a model.
CREATE VIEW aliases AS
SELECT market, unit, alias, model_id, model_ref, moved_at AS since, id AS event_id
FROM (
    SELECT *, row_number() OVER (
        PARTITION BY market, unit, alias,
            CASE WHEN alias = 'champion' THEN NULL ELSE coalesce(model_id, previous_model_id) END
        ORDER BY id DESC
    ) AS newest
    FROM alias_events
)
WHERE newest = 1 AND model_id IS NOT NULL;

-- Backfill: the champion of each market/unit (the newest, as `champion()` read it) gets one
-- event; from now on its `status` column says what it is when it no longer holds the alias.
INSERT INTO alias_events (market, unit, alias, model_id, model_ref, moved_by, reason)
SELECT market, unit, 'champion', id, name || '@' || version, 'user',
    'from models.status before alias history'
FROM (
    SELECT *, row_number() OVER (PARTITION BY market, unit ORDER BY id DESC) AS newest
    FROM models WHERE status = 'champion'
)
WHERE newest = 1
ORDER BY id;

UPDATE models SET status = 'retired' WHERE status = 'champion';
