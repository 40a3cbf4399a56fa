-- API tokens of the server: a name, a scope ('read' changes nothing, 'write' may), and the
-- sha256 of the secret, never the secret itself (a copied store file grants no access).
-- Revoked tokens stay (revoked stamped) so `upquant token list` can still show them.
CREATE SEQUENCE api_tokens_id_seq START 1;
CREATE TABLE api_tokens (
    id BIGINT PRIMARY KEY DEFAULT nextval('api_tokens_id_seq'),
    name VARCHAR NOT NULL,
    scope VARCHAR NOT NULL CHECK (scope IN ('read', 'write')),
    sha256 VARCHAR NOT NULL UNIQUE,
    created TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_used TIMESTAMPTZ,
    revoked TIMESTAMPTZ
);
