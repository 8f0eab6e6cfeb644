-- the sample service's table: one row per key, written through the write DSN
CREATE TABLE IF NOT EXISTS items (
    key text PRIMARY KEY,
    value text NOT NULL,
    written_by text NOT NULL,
    version text NOT NULL,
    written_at timestamptz NOT NULL DEFAULT now()
);
