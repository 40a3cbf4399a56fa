-- The paper broker (issue 12): a KRW account per engine mode ("live", "replay"; demo is never
-- stored), its orders, fills and open positions. DESIGN.md calls these tables orders, fills
-- and positions; they are prefixed paper_ so that real orders, should they ever come, are
-- never mistaken for paper ones. The broker (engine.trading.paper) writes what changed since
-- its last save, one transaction per pass of the live engine.
CREATE TABLE paper_accounts (
    account VARCHAR PRIMARY KEY,      -- live, replay
    config JSON NOT NULL,             -- engine.trading.paper.BrokerConfig
    cash DOUBLE NOT NULL,             -- KRW
    realised_pnl DOUBLE NOT NULL,     -- KRW, closed trades since the account was (re)set
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE paper_orders (
    account VARCHAR NOT NULL,
    id BIGINT NOT NULL,               -- the broker's order number within the account
    market VARCHAR NOT NULL,
    ts TIMESTAMPTZ NOT NULL,          -- the candle at whose close it was decided
    side VARCHAR NOT NULL,            -- buy, sell
    max_position DOUBLE,              -- a buy's cap in KRW (null: all cash)
    status VARCHAR NOT NULL,          -- pending, filled, rejected
    reason VARCHAR,                   -- why it was rejected
    fill_ts TIMESTAMPTZ,              -- the candle whose open filled or rejected it
    PRIMARY KEY (account, id)
);

CREATE TABLE paper_fills (
    account VARCHAR NOT NULL,
    id BIGINT NOT NULL,
    order_id BIGINT NOT NULL,
    market VARCHAR NOT NULL,
    ts TIMESTAMPTZ NOT NULL,          -- the candle at whose open it filled
    side VARCHAR NOT NULL,
    price DOUBLE NOT NULL,            -- KRW, slippage and tick included
    units DOUBLE NOT NULL,
    value DOUBLE NOT NULL,            -- units * price
    fee DOUBLE NOT NULL,              -- KRW
    cash DOUBLE NOT NULL,             -- the account's cash after it
    PRIMARY KEY (account, id)
);

CREATE TABLE paper_positions (        -- open positions only (flat: no row)
    account VARCHAR NOT NULL,
    market VARCHAR NOT NULL,
    units DOUBLE NOT NULL,
    entry_price DOUBLE NOT NULL,
    entry_ts TIMESTAMPTZ NOT NULL,
    cost DOUBLE NOT NULL,             -- KRW spent, fee included
    last_price DOUBLE NOT NULL,       -- the newest close it was marked to
    last_ts TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (account, market)
);
