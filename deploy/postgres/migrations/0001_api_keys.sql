-- tracegate key store, version 1.
-- Applied by `tracegate keys migrate --database-url URL` (idempotent; recorded in
-- tracegate_schema_migrations). The gateway itself connects with the read-only role
-- tracegate_gateway: it can read keys and LISTEN, never change them.

CREATE TABLE IF NOT EXISTS api_keys (
    key_id           text PRIMARY KEY,
    org_id           text        NOT NULL,
    workspace_id     text        NOT NULL DEFAULT '',
    project_id       text        NOT NULL,
    secret_hash      text        NOT NULL,          -- hex HMAC-SHA256(pepper, secret); never the secret
    scopes           text[]      NOT NULL,
    region           text        NOT NULL,
    allowed_vpce_ids text[]      NOT NULL DEFAULT '{}',
    allowed_cidrs    text[]      NOT NULL DEFAULT '{}',
    spans_per_sec    bigint,
    bytes_per_sec    bigint,
    burst_ms         bigint,
    expires_at       timestamptz,
    revoked          boolean     NOT NULL DEFAULT false,
    created_at       timestamptz NOT NULL DEFAULT now(),
    last_rotated_at  timestamptz
);

CREATE INDEX IF NOT EXISTS api_keys_project_idx ON api_keys (org_id, project_id);

-- Every change is pushed to listening gateways, which drop the cached record at once
-- (revocation within seconds; the cache TTL bounds it if a notification is lost).
CREATE OR REPLACE FUNCTION tracegate_api_keys_notify() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify('tracegate_api_keys', COALESCE(NEW.key_id, OLD.key_id));
    RETURN NULL;
END
$$ LANGUAGE plpgsql;

DROP TRIGGER IF EXISTS api_keys_notify ON api_keys;
CREATE TRIGGER api_keys_notify AFTER INSERT OR UPDATE OR DELETE ON api_keys
    FOR EACH ROW EXECUTE FUNCTION tracegate_api_keys_notify();

DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'tracegate_gateway') THEN
        CREATE ROLE tracegate_gateway NOLOGIN;
    END IF;
END
$$;
GRANT SELECT ON api_keys TO tracegate_gateway;
